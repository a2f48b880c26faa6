"""COCO-format instance datasets, read through pycocotools' own `COCO` index.

Using pycocotools (not a hand-written json reader) means what we train on is what the
official evaluator scores. Boxes come out as xyxy float32 in pixels, labels are the json's
category ids (not re-indexed; `category_names` maps them), and masks are decoded from
RLE or polygons by pycocotools. Missing or unreadable images are skipped and counted.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipheads.core.data.images import load_image
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.errors import UserError

Target = dict[str, Any]
JointTransform = Callable[[Image.Image, Target], Any]


def load_coco(ann_file: str | os.PathLike[str]) -> Any:
    """A pycocotools `COCO` index, with file and json errors as UserError (and no stdout chatter)."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise UserError("reading COCO json needs pycocotools; run: pip install 'clipheads[data]'") from exc
    path = Path(ann_file)
    if not path.is_file():
        raise UserError(f"COCO annotation file not found: {path}; pass the instances_*.json path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot parse COCO annotation file {path}: {exc}; is it a COCO json?") from exc
    if not isinstance(data, dict) or "images" not in data:
        raise UserError(f"{path} is not a COCO json (no 'images' list); pass an instances_*.json file")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    _check_category_ids(data, path)
    return coco_index(data)


def coco_index(data: dict[str, Any]) -> Any:
    """A pycocotools `COCO` index over an in-memory instances dict (no stdout chatter)."""
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_category_ids(data: dict[str, Any], path: Path) -> None:
    """An annotation naming a category the json does not define is a broken file, not a
    sample to skip: say which one."""
    known = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        if isinstance(ann, dict) and ann.get("category_id") not in known:
            raise UserError(f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')}) has category_id "
                            f"{ann.get('category_id')!r}, which is not in 'categories' (ids "
                            f"{sorted(known, key=str)[:10]}{'...' if len(known) > 10 else ''}); fix the json")


class CocoDetection(Dataset):
    """(PIL image, target) pairs from a COCO instances json and its image folder.

    target: image_id, boxes (N x 4 xyxy float32), labels (N int64 category ids),
    iscrowd (N int64), area (N float32), and masks (N x H x W uint8) when `with_masks`.
    `transform(image, target)` is applied last. Unreadable images give None (see
    `skip_none_collate`) and are counted in `self.skips`.
    """

    def __init__(self, image_dir: str | os.PathLike[str], ann_file: str | os.PathLike[str],
                 transform: JointTransform | None = None, with_masks: bool = False):
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise UserError(f"COCO image folder not found: {self.image_dir}; pass the folder "
                            "holding the json's file_name entries")
        self.coco = load_coco(ann_file)
        self.ids: list[int] = sorted(self.coco.imgs)
        self.transform = transform
        self.with_masks = with_masks
        self.skips = SkipCounter(f"coco:{Path(ann_file).name}")
        self.dropped_boxes = SkipCounter(f"coco:{Path(ann_file).name} boxes")

    @property
    def category_names(self) -> dict[int, str]:
        """Category id -> name, as in the json."""
        return {int(c["id"]): str(c["name"]) for c in self.coco.dataset["categories"]}

    def __len__(self) -> int:
        return len(self.ids)

    def _target(self, image_id: int, width: int, height: int) -> Target:
        anns = self.coco.imgToAnns.get(image_id, [])
        boxes, labels, crowd, area, masks = [], [], [], [], []
        for ann in anns:
            x, y, w, h = (float(v) for v in ann["bbox"])
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 <= x0 or y1 <= y0:   # empty or outside the image: no signal, and it breaks box losses
                self.dropped_boxes.skip(f"annotation {ann.get('id')} of image {image_id}",
                                        f"box {[x, y, w, h]} has no area inside the {width}x{height} image", "box")
                continue
            boxes.append((x0, y0, x1, y1))
            labels.append(int(ann["category_id"]))
            crowd.append(int(ann.get("iscrowd", 0)))
            area.append(float(ann.get("area", w * h)))
            if self.with_masks:
                masks.append(self.coco.annToMask(ann).astype(np.uint8))
        target: Target = {
            "image_id": image_id,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
            "area": torch.tensor(area, dtype=torch.float32),
        }
        if self.with_masks:
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, height, width), dtype=torch.uint8))
        return target

    def __getitem__(self, index: int) -> Any:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = self.skips.attempt(str(path), lambda: load_image(path, exif=False))
        if image is None:
            return None
        width, height = int(info.get("width", image.width)), int(info.get("height", image.height))
        if image.size != (width, height):
            raise UserError(f"{path} is {image.width}x{image.height} but its COCO entry says "
                            f"{width}x{height}; check that image_dir matches the annotation file")
        target = self._target(image_id, width, height)
        return self.transform(image, target) if self.transform else (image, target)
