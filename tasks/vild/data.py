"""Training samples for ViLD from a COCO-format instances json (COCO, LVIS, the
exported tiny world): base-class annotations only, with the image's cached proposals.

Open-vocabulary discipline: annotations of novel categories are removed before the
detector sees an image (counted), and labels index the *base* vocabulary, so a novel
name never reaches the classifier in training. Boxes with no area inside the image are
dropped and counted by the COCO reader; unreadable images are skipped and counted.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clipheads.core.data.coco import CocoDetection
from clipheads.core.errors import UserError

from .proposal_cache import ShardRecord
from .roi_heads import DistillTargets


def to_tensor(image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float in 0..1 (the detector's transform normalises)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


class BaseClassSamples(Dataset):
    """(image [3, H, W], target {boxes, labels, masks}, DistillTargets | None) per image.

    `base`: the classes whose boxes are trained on. `vocabulary`: the classifier's class
    list, labels are 1 + its index (default: `base` itself; the official LVIS recipe uses
    all 1203 classes with the rare ones' logits zeroed).
    `cache`: image id -> cached proposals (ViLD-image), or None for ViLD-text."""

    def __init__(self, image_dir, ann_file, base: Sequence[str], cache: dict[int, ShardRecord] | None = None,
                 with_masks: bool = True, max_distill: int | None = None, vocabulary: Sequence[str] | None = None):
        self.coco = CocoDetection(image_dir, ann_file, with_masks=with_masks)
        names = self.coco.category_names
        unknown = [n for n in base if n not in names.values()]
        if unknown:
            raise UserError(f"base classes {unknown} are not categories of {ann_file} "
                            f"({sorted(names.values())[:8]}...); fix data.base")
        index = {n: i + 1 for i, n in enumerate(vocabulary or base)}
        kept = set(base)
        self.label_of = {cid: index[name] if name in kept else 0 for cid, name in names.items()}   # 0: held out
        self.cache, self.max_distill = cache, max_distill
        self.removed_novel = sum(1 for a in self.coco.coco.dataset["annotations"]   # held out, never trained on
                                 if self.label_of[int(a["category_id"])] == 0)
        if cache is not None:
            missing = [i for i in self.coco.ids if i not in cache]
            if missing:
                raise UserError(f"the proposal cache has no entry for {len(missing)} training images "
                                f"(first: image id {missing[0]}); it was made for other data")

    @property
    def skips(self):
        return self.coco.skips

    @property
    def ids(self) -> list[int]:
        return self.coco.ids

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> Any:
        item = self.coco[index]
        if item is None:
            return None
        image, target = item
        labels = torch.tensor([self.label_of[int(c)] for c in target["labels"]], dtype=torch.int64)
        keep = labels > 0
        out = {"boxes": target["boxes"][keep], "labels": labels[keep]}
        if "masks" in target:
            out["masks"] = target["masks"][keep]
        distill = None
        if self.cache is not None:
            record = self.cache[target["image_id"]]
            m = self.max_distill or len(record.boxes)
            distill = DistillTargets(record.boxes[:m].float(), record.embeddings[:m].float())
        return to_tensor(image), out, distill


def collate(batch: list) -> tuple[list, list, list | None] | None:
    """Lists (torchvision detection style); unreadable images (None) are dropped."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    images, targets, distill = zip(*batch)
    return list(images), list(targets), (list(distill) if distill[0] is not None else None)
