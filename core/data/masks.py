"""Semantic segmentation from an image folder plus a PNG-mask folder (ADE20K layout).

`images/<split>/NAME.jpg` pairs with `annotations/<split>/NAME.png`, whose pixel values
are class indices ('L' or palette 'P' PNGs; the palette is ignored). ADE20K stores 0 as
"other" (ignored in its benchmark) and classes from 1: `reduce_zero_label=True` maps
0 -> `ignore_index` and k -> k - 1, as mmsegmentation does. The tiny world keeps 0 as a
real "background" class, so it reads with the default `reduce_zero_label=False`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipheads.core.data.errors import CorruptSample
from clipheads.core.data.images import load_image, open_image
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IGNORE_INDEX = 255
JointTransform = Callable[[Image.Image, torch.Tensor], Any]


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Class-index mask (H x W uint8) from an 'L'/'P' PNG; RGB colour-coded masks are refused."""
    img = open_image(path, exif=False)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8).copy()
    raise CorruptSample(path, f"mask PNG has mode {img.mode!r}, expected class indices ('L' or 'P')",
                        fix="save masks as single-channel PNGs whose pixel value is the class index")


class SegmentationFolder(Dataset):
    """(PIL image, H x W uint8 mask tensor) pairs; `transform(image, mask)` is applied last.

    Pairs are every image of `image_dir` (sorted), or, with `names` (a split list, as
    mmsegmentation's `split=` file), `NAME + image_suffix` in that order; each pairs with
    `ann_dir / NAME + mask_suffix`. Pairs with a missing file are skipped at construction
    (one log line each, counted in `self.skips`); a mask whose size differs from its image
    raises UserError naming both.
    """

    def __init__(self, image_dir: str | os.PathLike[str], ann_dir: str | os.PathLike[str],
                 transform: JointTransform | None = None, reduce_zero_label: bool = False,
                 ignore_index: int = IGNORE_INDEX, names: Sequence[str] | None = None,
                 image_suffix: str = ".jpg", mask_suffix: str = ".png"):
        self.image_dir, self.ann_dir = Path(image_dir), Path(ann_dir)
        for what, folder in (("image", self.image_dir), ("annotation", self.ann_dir)):
            if not folder.is_dir():
                raise UserError(f"{what} folder not found: {folder}; pass the ADE20K-style "
                                f"images/<split> and annotations/<split> folders")
        if not 0 <= ignore_index <= 255:
            raise UserError(f"ignore_index must fit the uint8 masks (0..255), got {ignore_index}")
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.skips = SkipCounter(f"masks:{self.ann_dir}")
        self.pairs: list[tuple[Path, Path]] = []
        if names is None:
            images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            images = [self.image_dir / f"{name}{image_suffix}" for name in names]
        for img in images:
            ann = self.ann_dir / f"{img.stem}{mask_suffix}"
            if not img.is_file():
                self.skips.skip(str(img), "image file not found", kind="missing")
            elif ann.is_file():
                self.pairs.append((img, ann))
            else:
                self.skips.skip(str(img), f"no annotation {ann}", kind="missing")
        if not self.pairs:
            raise UserError(f"no image/mask pairs in {self.image_dir} and {self.ann_dir}; masks must "
                            f"be PNGs named like their images (NAME.jpg -> NAME{mask_suffix})")

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        img_path, ann_path = self.pairs[index]
        image = load_image(img_path, exif=False)
        mask = read_label_png(ann_path)
        if mask.shape != (image.height, image.width):
            raise UserError(f"mask {ann_path} is {mask.shape[1]}x{mask.shape[0]} but image {img_path} "
                            f"is {image.width}x{image.height}; masks must match their image size")
        return image, mask

    def __getitem__(self, index: int) -> Any:
        pair = self.skips.attempt(str(self.pairs[index][0]), lambda: self._read(index))
        if pair is None:
            return None
        image, mask = pair
        if self.reduce_zero_label:
            ignored = (mask == 0) | (mask == self.ignore_index)
            mask = np.where(ignored, self.ignore_index, mask.astype(np.int64) - 1).astype(np.uint8)
        target = torch.from_numpy(mask)
        return self.transform(image, target) if self.transform else (image, target)
