"""Evaluation runs shared by the segmentation heads: mIoU / pixel accuracy of any segmenter
over scenes, and the tiny world's open-vocabulary report (training classes vs held-out
classes, plus ['background', class] episodes for each held-out class, with chance levels).

A segmenter is anything with `.predict(PIL image) -> H x W int mask` whose values index the
label list it was built with, so LSeg, GroupViT or an oracle evaluate the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipheads.core.segmentation.metrics import ConfusionMatrix, binary_counts, chance_iou
from clipheads.core.tinyworld import CATEGORIES


@dataclass
class EvalScene:
    """One evaluation image with its ground truth (label indices of the eval label set)."""

    image: Image.Image
    mask: np.ndarray
    name: str


class MaskPredictor(Protocol):
    """What the evaluation needs of a segmenter: one label index per pixel."""

    def predict(self, image: Image.Image) -> np.ndarray: ...


MakeSegmenter = Callable[[list[str]], MaskPredictor]


def confusion(segmenter: MaskPredictor, scenes: Iterable[EvalScene], num_labels: int,
              ignore_index: int = 255, progress: bool = False, total: int | None = None) -> ConfusionMatrix:
    """Accumulate predictions of `segmenter` against each scene's ground truth."""
    cm = ConfusionMatrix(num_labels, ignore_index)
    for scene in tqdm(scenes, total=total, desc="eval", disable=not progress, leave=False):
        cm.update(segmenter.predict(scene.image), scene.mask, where=scene.name)
    return cm


def tiny_world_report(make: MakeSegmenter, scenes: Sequence[EvalScene], background: str,
                      heldout: Sequence[str], progress: bool = False) -> dict[str, Any]:
    """Open-vocabulary metrics on tiny-world scenes (mask values index [background, *shapes]).

    - generalized: every pixel labelled among all 1 + len(shapes) names; mIoU of the training
      classes and of the held-out classes, with the held-out classes' chance IoU;
    - episodes: for each held-out shape, the scenes containing it segmented with
      [background, shape] only (the PASCAL-5i style protocol): mIoU and FB-IoU."""
    names = [background, *CATEGORIES]
    cm = confusion(make(names), scenes, len(names), progress=progress, total=len(scenes))
    seen_idx = [i for i, n in enumerate(names) if n not in heldout]
    held_idx = [i for i, n in enumerate(names) if n in heldout]
    gt_pixels = cm.counts.sum(1).double()
    share = (gt_pixels / max(float(gt_pixels.sum()), 1.0)).numpy()
    report = {"scenes": len(scenes), "labels": names, "heldout": list(heldout),
              "miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy(),
              "miou_seen": cm.miou(seen_idx),
              "per_class_iou": cm.summary(names)["per_class_iou"]}
    if held_idx:
        report["miou_heldout"] = cm.miou(held_idx)
        report["chance_iou_heldout"] = float(np.mean([chance_iou(share[i], len(names)) for i in held_idx]))
        report["episodes"] = heldout_episodes(make, scenes, background, heldout)
    return report


def heldout_episodes(make: MakeSegmenter, scenes: Sequence[EvalScene], background: str,
                     heldout: Sequence[str]) -> dict[str, Any]:
    """[background, shape] episodes over the scenes that contain each held-out shape."""
    per_class, total = {}, np.zeros((2, 2))
    fg_pixels = valid_pixels = 0
    for shape in heldout:
        cid = 1 + CATEGORIES.index(shape)
        seg = make([background, shape])
        counts = np.zeros((2, 2))
        for scene in scenes:
            if (scene.mask == cid).any():
                counts += binary_counts(seg.predict(scene.image), scene.mask, cid)
                fg_pixels += int((scene.mask == cid).sum())
                valid_pixels += int((scene.mask != 255).sum())
        if counts[1, 1] > 0:
            per_class[shape] = counts[1, 0] / counts[1, 1]
            total += counts
    if not per_class:
        return {}
    share = fg_pixels / max(valid_pixels, 1)
    fb = float(np.mean([total[0, 0] / max(total[0, 1], 1), total[1, 0] / max(total[1, 1], 1)]))
    return {"miou": float(np.mean(list(per_class.values()))), "fb_iou": fb,
            "per_class_iou": {k: round(float(v), 6) for k, v in per_class.items()},
            "chance_miou": float(chance_iou(share, 2)),
            "chance_fb_iou": 0.5 * (chance_iou(1 - share, 2) + chance_iou(share, 2))}
