"""The bundled tiny-world ViLD detector: trained on four base shapes' boxes and names,
distilled from the tiny CLIP's region embeddings, it finds the two novel shapes (never
a box, never a name in training) in held-out scenes clearly better than its text branch
alone (ViLD-text), and finds base shapes drawn with plain PIL.

Not (yet) reached: novel shapes drawn with plain PIL get boxes (IoU >= 0.5) but scores
near zero (docs/vild.md), so that part of the issue stays open and is not asserted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipheads.tasks.vild.tinyworld import BASE, NOVEL
from clipheads.tasks.vild.weights import bundled_detector_dir, read_info

from drawings import two_shapes

LABELS = [*BASE, *NOVEL]


@pytest.fixture(scope="module")
def task():
    torch.set_num_threads(1)
    import clipheads
    return clipheads.load("vild", device="cpu", progress=False)


def test_bundled_detector_records_what_it_never_saw(task):
    info = read_info(bundled_detector_dir())
    assert tuple(info.base) == BASE and tuple(info.novel) == NOVEL
    assert info.backbone == "tiny-world" and info.backbone_fingerprint == task.ctx.backbone.fingerprint
    assert info.vild.mode == "ensemble" and "never seen" in info.notes


def test_novel_shapes_are_found_and_distillation_beats_text_only(task):
    ensemble = task.evaluate("tiny-world")["bbox"]               # the 100 validation scenes
    text_only = task.evaluate("tiny-world", branch="text")["bbox"]
    assert ensemble["AP50_novel"] > 0.3, ensemble
    assert ensemble["AP50_novel"] > text_only["AP50_novel"] + 0.1, (ensemble, text_only)
    assert ensemble["AP50_base"] > 0.8, ensemble


def _iou(box, mask) -> float:
    ys, xs = np.nonzero(mask)
    truth = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    ix = max(0.0, min(box[2], truth[2]) - max(box[0], truth[0]))
    iy = max(0.0, min(box[3], truth[3]) - max(box[1], truth[1]))
    inter = ix * iy
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return inter / (area(box) + area(truth) - inter)


@pytest.mark.parametrize("pair", [(("red", "circle"), ("blue", "heart")),
                                  (("green", "square"), ("orange", "cross"))])
def test_pil_drawn_base_shape_next_to_a_novel_one(task, pair):
    image, masks = two_shapes(*pair, size=96)
    dets = task.predict([image], LABELS)[0]
    for (_, shape), mask in zip(pair[:1], masks[:1]):
        hits = [d for d in dets if _iou(d.box, mask) >= 0.5]
        assert hits, f"no box on the drawn {shape} (detections: {[(d.label, round(d.score, 2)) for d in dets]})"
        best = max(hits, key=lambda d: d.score)
        assert best.label == shape, f"the drawn {shape} is labelled {best.label} ({best.score:.2f})"
