"""Segmentation metrics from one accumulated confusion matrix: per-class IoU, mIoU and
pixel accuracy with an ignore index, and the foreground/background IoU of binary episodes.

mIoU averages over classes that occur (in the ground truth or the prediction) in the
evaluated set, as mmsegmentation does; classes that never occur are reported as NaN.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from clipheads.core.errors import UserError


class ConfusionMatrix:
    """`counts[t, p]` = pixels of ground-truth class t predicted as p (ignored pixels skipped)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise UserError(f"a confusion matrix needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred, target, where: str = "") -> None:
        """Add one prediction/ground-truth pair (arrays or tensors of equal shape)."""
        pred = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred)
        target = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
        if pred.shape != target.shape:
            raise UserError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} "
                            f"differ in size{' for ' + where if where else ''}")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and int(target.max()) >= self.num_classes:
            raise UserError(f"ground truth{' ' + where if where else ''} holds class index "
                            f"{int(target.max())} but only {self.num_classes} label names are known; "
                            "fix the labels file or data.reduce_zero_label")
        flat = target * self.num_classes + pred.clamp(0, self.num_classes - 1)
        self.counts += torch.bincount(flat, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def intersection_union(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.counts.double()
        inter = torch.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        return inter.numpy(), union.numpy()

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both prediction and ground truth."""
        inter, union = self.intersection_union()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def miou(self, classes: Sequence[int] | None = None) -> float:
        iou = self.iou()
        values = iou if classes is None else iou[list(classes)]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.counts.sum())
        return float(torch.diag(self.counts).sum()) / total if total else float("nan")

    def summary(self, names: Sequence[str]) -> dict:
        iou = self.iou()
        return {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy(),
                "per_class_iou": {n: (None if np.isnan(v) else round(float(v), 6))
                                  for n, v in zip(names, iou)}}


def chance_iou(fraction: float, num_labels: int) -> float:
    """Expected IoU of a class covering `fraction` of the pixels when every pixel gets a
    uniformly random label out of `num_labels`: the floor 'clearly above chance' means."""
    q = 1.0 / num_labels
    inter = fraction * q
    union = fraction + q - inter
    return inter / union if union > 0 else float("nan")
