"""Labelled image sets for the probe and evaluation: ImageFolder trees and torchvision's
CIFAR-10/100 when they are already on disk (nothing is downloaded)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from clipheads.core.data.images import load_image
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.errors import UserError

log = logging.getLogger(__name__)
SPLIT_NAMES = {"train": ("train",), "test": ("test", "val", "validation")}


@dataclass
class LabelledImages:
    """Either file paths or in-memory images, with integer targets and class names."""

    classes: list[str]
    targets: list[int]
    paths: list[Path] | None = None
    images: object | None = None  # an indexable of PIL images (torchvision CIFAR)

    def __len__(self) -> int:
        return len(self.targets)

    def items(self, skips: SkipCounter) -> Iterator[tuple[Image.Image, int]]:
        """Images with targets; unreadable files are skipped and counted in `skips`."""
        for i, target in enumerate(self.targets):
            if self.paths is None:
                yield self.images[i][0], target
                continue
            image = skips.attempt(str(self.paths[i]), lambda p=self.paths[i]: load_image(p))
            if image is not None:
                yield image, target


def class_name(folder: str) -> str:
    return folder.replace("_", " ")


def image_folder(root: Path, classes: list[str] | None = None) -> LabelledImages:
    """`root/<class>/*.jpg`; class names are folder names with '_' read as spaces."""
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not folders:
        raise UserError(f"{root} has no class sub-folders; expected {root}/<class>/<image>")
    names = classes or [class_name(f) for f in folders]
    paths, targets = [], []
    for folder in folders:
        if class_name(folder) not in names:
            raise UserError(f"{root}/{folder}: class not present in the training classes")
        for p in sorted((root / folder).rglob("*")):
            if p.suffix.lower() in IMG_EXTENSIONS:
                paths.append(p)
                targets.append(names.index(class_name(folder)))
    if not paths:
        raise UserError(f"{root} holds no images (extensions: {', '.join(IMG_EXTENSIONS)})")
    return LabelledImages(names, targets, paths=paths)


def find_split(root: Path, split: str) -> Path:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has no {'/'.join(SPLIT_NAMES[split])} folder; expected "
                    f"{root}/train/<class>/... and {root}/test/<class>/...")


def cifar(name: str, root: Path, train: bool) -> LabelledImages:
    from torchvision import datasets
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as exc:
        raise UserError(f"{name} not found under {root} (nothing is downloaded); put the "
                        f"extracted python version there, e.g. {root}/cifar-10-batches-py") from exc
    return LabelledImages([c.replace("_", " ") for c in ds.classes], list(ds.targets), images=ds)


def load_split(data: Path, split: str, dataset: str = "folder",
               classes: list[str] | None = None) -> LabelledImages:
    if dataset in ("cifar10", "cifar100"):
        return cifar(dataset, data, train=(split == "train"))
    if dataset != "folder":
        raise UserError(f"unknown --dataset '{dataset}'; use folder, cifar10 or cifar100")
    return image_folder(find_split(data, split), classes)


@torch.no_grad()
def extract_features(backbone, data: LabelledImages, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Frozen image features for every readable image: (features, targets, skipped paths)."""
    feats, targets, batch, batch_t = [], [], [], []
    skips = SkipCounter("images", announce_first=False)

    def flush():
        if batch:
            feats.append(backbone.encode_image(backbone.images_to_pixels(batch)).float().cpu())
            targets.extend(batch_t)
            batch.clear()
            batch_t.clear()

    for image, target in data.items(skips):
        batch.append(image)
        batch_t.append(target)
        if len(batch) == batch_size:
            flush()
    flush()
    if not feats:
        raise UserError(f"no readable images to encode ({skips.summary()})")
    if skips.count:
        log.warning("%s (of %d images)", skips.summary(), len(data))
    return torch.cat(feats), torch.tensor(targets), list(skips.keys)
