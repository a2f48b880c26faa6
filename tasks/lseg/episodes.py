"""Zero-shot episodes (PASCAL-5i protocol, as LSeg evaluates it): every query image of a
fold is segmented with the two labels ['others', class]; per-class foreground IoU is
averaged over the fold's classes (mIoU) and foreground/background IoU over all episodes
(FB-IoU), accumulating intersections and unions as HSNet's evaluator does.

Data: a PASCAL VOC 2012 folder (JPEGImages/, SegmentationClassAug/ or
SegmentationClass/ with class-index PNGs, 255 = ignore). Query lists come from
`splits/val/fold{i}.txt` (HSNet format `NAME__CC`) when present, else from
ImageSets/Segmentation/val.txt: one query per (image, fold class it contains).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from clipheads.core.data.images import load_image
from clipheads.core.data.masks import read_label_png
from clipheads.core.errors import UserError
from clipheads.core.segmentation.metrics import binary_counts

from .labels import read_label_file

# The benchmark's own class list (fold i = classes 5i+1 .. 5i+5); a labels.txt in the
# data root overrides it.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
OTHERS = "others"
Predict = Callable[[Image.Image, list[str]], np.ndarray]


@dataclass
class Episode:
    name: str
    class_id: int          # 1-based VOC id


@dataclass
class FoldResult:
    fold: int
    classes: list[str]
    episodes: int
    miou: float
    fb_iou: float
    per_class_iou: dict[str, float] = field(default_factory=dict)


class VOCFolder:
    """Images and class-index masks of a VOC-layout root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.images = self.root / "JPEGImages"
        masks = [self.root / d for d in ("SegmentationClassAug", "SegmentationClass")]
        self.masks = next((m for m in masks if m.is_dir()), None)
        if not self.images.is_dir() or self.masks is None:
            raise UserError(f"{self.root} is not a PASCAL VOC folder: expected JPEGImages/ and "
                            "SegmentationClassAug/ (or SegmentationClass/)")
        names = self.root / "labels.txt"
        self.class_names = read_label_file(names) if names.is_file() else list(VOC_CLASSES)
        if len(self.class_names) < 20:
            raise UserError(f"{names} lists {len(self.class_names)} classes; PASCAL-5i needs 20")

    def image(self, name: str) -> Image.Image:
        return load_image(self.images / f"{name}.jpg", exif=False)

    def mask(self, name: str) -> np.ndarray:
        return read_label_png(self.masks / f"{name}.png")

    @staticmethod
    def fold_classes(fold: int) -> list[int]:
        if fold not in (0, 1, 2, 3):
            raise UserError(f"PASCAL-5i fold must be 0, 1, 2 or 3, got {fold}")
        return list(range(5 * fold + 1, 5 * fold + 6))

    def queries(self, fold: int) -> list[Episode]:
        """The fold's query list (HSNet's file when present, else derived from val.txt)."""
        classes = self.fold_classes(fold)
        listed = self.root / "splits" / "val" / f"fold{fold}.txt"
        if listed.is_file():
            out = []
            for line in listed.read_text().split():
                name, _, cid = line.partition("__")
                if int(cid) in classes:
                    out.append(Episode(name, int(cid)))
            return out
        val = self.root / "ImageSets" / "Segmentation" / "val.txt"
        if not val.is_file():
            raise UserError(f"no query list for fold {fold}: expected {listed} or {val}")
        out = []
        for name in val.read_text().split():
            if not (self.masks / f"{name}.png").is_file():
                continue
            present = set(np.unique(self.mask(name)).tolist())
            out.extend(Episode(name, c) for c in classes if c in present)
        return out


def episode_schedule(queries: Sequence[Episode], n: int) -> dict[tuple[str, int], int]:
    """How often each query is evaluated: the first `n` of the list cycled (HSNet's
    `idx % len`), so repeated queries are computed once and counted by multiplicity."""
    if not queries:
        return {}
    counts: dict[tuple[str, int], int] = {}
    for i in range(n):
        q = queries[i % len(queries)]
        counts[(q.name, q.class_id)] = counts.get((q.name, q.class_id), 0) + 1
    return counts


def evaluate_fold(data: VOCFolder, fold: int, predict: Predict, episodes: int = 1000) -> FoldResult:
    """mIoU and FB-IoU of one fold with labels ['others', class] per episode."""
    classes = data.fold_classes(fold)
    schedule = episode_schedule(data.queries(fold), episodes)
    if not schedule:
        raise UserError(f"fold {fold}: no query image contains any of its classes")
    per_class = {c: np.zeros((2, 2)) for c in classes}
    for (name, cid), times in schedule.items():
        labels = [OTHERS, data.class_names[cid - 1]]
        pred = predict(data.image(name), labels)
        per_class[cid] += times * binary_counts(pred, data.mask(name), cid)
    ious = {c: v[1, 0] / max(v[1, 1], 1.0) for c, v in per_class.items() if v[1, 1] > 0}
    total = sum(per_class.values())
    fb = float(np.mean([total[0, 0] / max(total[0, 1], 1.0), total[1, 0] / max(total[1, 1], 1.0)]))
    names = [data.class_names[c - 1] for c in classes]
    return FoldResult(fold, names, int(sum(schedule.values())), float(np.mean(list(ious.values()))), fb,
                      {data.class_names[c - 1]: round(float(v), 6) for c, v in ious.items()})
