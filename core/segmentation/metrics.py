"""Segmentation metrics from one accumulated confusion matrix: per-class IoU, mIoU and
pixel accuracy with an ignore index; the chance IoU of a uniform random labeller; and the
per-episode counts of binary ([background, class]) episodes, for FB-IoU.

mIoU averages over classes that occur (in the ground truth or the prediction) in the
evaluated set, as mmsegmentation does; classes that never occur are reported as NaN.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from clipheads.core.errors import UserError


class ConfusionMatrix:
    """`counts[t, p]` = pixels of ground-truth class t predicted as p (ignored pixels skipped)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise UserError(f"a confusion matrix needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
               where: str = "") -> None:
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
                            "fix the class names (labels file) or the mask encoding (reduce_zero_label)")
        flat = target * self.num_classes + pred.clamp(0, self.num_classes - 1)
        self.counts += torch.bincount(flat, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def intersection_union(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class pixel intersections and unions (float64), the terms of IoU."""
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
        """Mean IoU over `classes` (all by default), leaving out classes that never occur."""
        iou = self.iou()
        values = iou if classes is None else iou[list(classes)]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.counts.sum())
        return float(torch.diag(self.counts).sum()) / total if total else float("nan")

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready mIoU, pixel accuracy and per-class IoU (None where a class never occurs)."""
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


def binary_counts(pred: np.ndarray, gt: np.ndarray, class_id: int, ignore_index: int = 255) -> np.ndarray:
    """[2 (bg, fg), 2 (inter, union)] pixel counts of one binary episode, where `pred` is 1
    for the class and 0 elsewhere; summed over episodes they give per-class IoU and
    FB-IoU as HSNet's evaluator accumulates them (ignore pixels skipped)."""
    if pred.shape != gt.shape:
        raise UserError(f"prediction {pred.shape} and mask {gt.shape} differ in size")
    keep = gt != ignore_index
    fg_gt = (gt == class_id) & keep
    fg_pr = (pred == 1) & keep
    bg_gt, bg_pr = keep & ~fg_gt, keep & ~fg_pr
    return np.array([[np.sum(bg_gt & bg_pr), np.sum(bg_gt | bg_pr)],
                     [np.sum(fg_gt & fg_pr), np.sum(fg_gt | fg_pr)]], dtype=np.float64)
