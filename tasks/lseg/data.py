"""Training and evaluation data for LSeg: tiny-world scenes and ADE20K-layout folders,
with the paper's augmentation (random scale, flip, pad, crop).

Randomness comes from torch's generator only, so the core Trainer's exact resume (which
restores torch RNG state) reproduces the same crops.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from clipheads.core.data.masks import SegmentationFolder
from clipheads.core.engine.data import SampleSeeded
from clipheads.core.errors import UserError
from clipheads.core.segmentation.evaluation import EvalScene
from clipheads.core.tinyworld import CATEGORIES, make_scene, split_seeds

from .config import AugmentConfig
from .labels import FolderLabels

log = logging.getLogger(__name__)


def image_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 [3, H, W] from an RGB PIL image or an H x W x 3 array."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class TrainAugment:
    """(image, mask) -> normalised float [3, c, c] and long [c, c]: the long side resized to
    base_size x U(scale_min, scale_max), random horizontal flip, padding (image black,
    mask ignore) and a random crop of crop_size."""

    def __init__(self, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float],
                 ignore_index: int = 255):
        if cfg.crop_size < 1 or cfg.base_size < 1 or not 0 < cfg.scale_min <= cfg.scale_max:
            raise UserError("augment: crop_size/base_size must be >= 1 and 0 < scale_min <= scale_max")
        self.cfg = cfg
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.ignore_index = ignore_index

    def __call__(self, image: Image.Image | torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random draws come from `generator` (a per-sample one from the dataset), else the
        global RNG."""
        cfg, g = self.cfg, generator
        img = image if isinstance(image, torch.Tensor) else image_tensor(image)
        h, w = img.shape[-2:]
        u = float(torch.rand((), generator=g))
        long = max(1, int(cfg.base_size * (cfg.scale_min + u * (cfg.scale_max - cfg.scale_min))))
        oh, ow = (long, max(1, int(w * long / h + 0.5))) if h > w else (max(1, int(h * long / w + 0.5)), long)
        x = F.interpolate(img[None].float(), size=(oh, ow), mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp_(0, 255)
        m = F.interpolate(mask[None, None].float(), size=(oh, ow), mode="nearest")[0, 0].long()
        if cfg.flip and float(torch.rand((), generator=g)) < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        c = cfg.crop_size
        ph, pw = max(0, c - oh), max(0, c - ow)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            m = F.pad(m, (0, pw, 0, ph), value=self.ignore_index)
        y0 = int(torch.randint(0, x.shape[-2] - c + 1, (), generator=g))
        x0 = int(torch.randint(0, x.shape[-1] - c + 1, (), generator=g))
        x, m = x[:, y0:y0 + c, x0:x0 + c], m[y0:y0 + c, x0:x0 + c]
        return (x / 255.0 - self.mean) / self.std, m


# tiny world -------------------------------------------------------------------------
def tiny_world_labels(background: str, heldout: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(training labels: background + shapes not held out, held-out shapes), validated."""
    unknown = [h for h in heldout if h not in CATEGORIES]
    if unknown:
        raise UserError(f"data.heldout: unknown tiny-world shape(s) {unknown}; choose from "
                        f"{', '.join(CATEGORIES)}")
    seen = [c for c in CATEGORIES if c not in heldout]
    if not seen:
        raise UserError("data.heldout holds every shape; keep at least one for training")
    return [background] + seen, [c for c in CATEGORIES if c in heldout]


def _render(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, size = args
    scene = make_scene(seed, size=size)
    return np.asarray(scene.image, dtype=np.uint8), scene.mask


def render_scenes(split: str, n: int, size: int, workers: int = 0, start: int = 0,
                  keep=None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """`n` scenes of `split` (images [n,H,W,3], category masks [n,H,W], seeds), skipping
    scenes for which `keep(mask)` is False; deterministic in the seeds whatever `workers`."""
    images, masks, seeds = [], [], []
    pos = start
    pool = None
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(workers)
    try:
        while len(images) < n:
            chunk = split_seeds(split, max(64, 2 * (n - len(images))), start=pos)
            pos += len(chunk)
            jobs = [(s, size) for s in chunk]
            done = pool.map(_render, jobs, chunksize=32) if pool else [_render(j) for j in jobs]
            for seed, (img, mask) in zip(chunk, done):
                if keep is None or keep(mask):
                    images.append(img)
                    masks.append(mask)
                    seeds.append(seed)
                    if len(images) == n:
                        break
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8), []
    return np.stack(images), np.stack(masks), seeds


class TinyWorldSegmentation(SampleSeeded, Dataset):
    """Tiny-world scenes rendered once, masks mapped to training-label indices.

    Held-out shapes never receive a label: with `heldout_mode='drop'` scenes showing
    them are skipped, with 'ignore' their pixels get `ignore_index`. Augmentation draws
    are keyed by (seed, epoch, index), so 1 and N ranks see the same crops."""

    def __init__(self, labels: Sequence[str], heldout: Sequence[str], n: int, size: int,
                 transform=None, split: str = "train", heldout_mode: str = "drop",
                 ignore_index: int = 255, workers: int = 0, seed: int = 0):
        self.seed = seed
        lut = np.full(256, ignore_index, dtype=np.uint8)
        lut[0] = 0
        for k, name in enumerate(CATEGORIES, start=1):
            if name in labels:
                lut[k] = list(labels).index(name)
        held_ids = [k for k, name in enumerate(CATEGORIES, start=1) if name in heldout]
        keep = None
        if heldout_mode == "drop" and held_ids:
            keep = lambda m: not np.isin(m, held_ids).any()  # noqa: E731
        images, masks, self.seeds = render_scenes(split, n, size, workers, keep=keep)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(lut[masks])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int):
        img, mask = self.images[index], self.masks[index]
        return self.transform(img, mask, self.sample_generator(index)) if self.transform else (img, mask)


def tiny_world_eval(split: str, n: int, size: int) -> list[EvalScene]:
    """Scenes of a held-out split; mask values index ['background', *CATEGORIES]."""
    images, masks, seeds = render_scenes(split, n, size)
    return [EvalScene(Image.fromarray(i, "RGB"), m, f"{split}_{s}") for i, m, s in zip(images, masks, seeds)]


# folders ---------------------------------------------------------------------------
def split_folders(root: Path, split: str) -> tuple[Path, Path]:
    img, ann = root / "images" / split, root / "annotations" / split
    if not img.is_dir():
        found = sorted(p.name for p in (root / "images").iterdir()) if (root / "images").is_dir() else []
        raise UserError(f"no image folder {img}; expected the ADE20K layout images/<split> + "
                        f"annotations/<split>{' (splits here: ' + ', '.join(found) + ')' if found else ''}")
    return img, ann


class FolderSegmentation(SampleSeeded, Dataset):
    """The core's ADE20K-layout reader (missing masks skipped and counted, size mismatches
    named) with each mask checked against the number of class names, then `transform`
    (its random draws keyed by (seed, epoch, index))."""

    def __init__(self, root: Path, split: str, labels: FolderLabels, transform=None,
                 ignore_index: int = 255, seed: int = 0):
        self.seed = seed
        img, ann = split_folders(root, split)
        self.folder = SegmentationFolder(img, ann, reduce_zero_label=labels.reduce_zero_label,
                                         ignore_index=ignore_index)
        self.num_labels = len(labels.names)
        self.ignore_index = ignore_index
        self.transform = transform
        if self.folder.skips.count:
            log.warning(self.folder.skips.summary())

    @property
    def skipped(self) -> int:
        return self.folder.skips.count

    def name(self, index: int) -> str:
        return self.folder.pairs[index][0].name

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        pair = self.folder[index]
        if pair is None:
            return None
        image, mask = pair
        valid = mask[mask != self.ignore_index]
        if valid.numel() and int(valid.max()) >= self.num_labels:
            raise UserError(f"mask {self.folder.pairs[index][1]} holds class index {int(valid.max())} "
                            f"but only {self.num_labels} class names are known; fix the labels file "
                            "or data.reduce_zero_label")
        return self.transform(image, mask, self.sample_generator(index)) if self.transform else (image, mask)


def folder_scenes(ds: FolderSegmentation, limit: int | None = None) -> Iterator[EvalScene]:
    """Readable (image, mask) pairs of a folder dataset; unreadable ones are skipped (counted
    in `ds.skipped`)."""
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        item = ds[i]
        if item is not None:
            image, mask = item
            yield EvalScene(image, mask.numpy() if isinstance(mask, torch.Tensor) else mask, ds.name(i))
