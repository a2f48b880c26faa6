"""The shipped tiny CLIP: intact, small, and it knows the tiny world's concepts — on the
generator's held-out images and on shapes drawn by PIL in this test."""
from __future__ import annotations

import pytest
import torch

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.backbone.spec import tiny_world_dir
from clipheads.core.tinyworld import COLOURS, SHAPES
from clipheads.tasks.clip.data import class_names, heldout_singles, zero_shot_accuracy
from clipheads.tasks.clip.export import sha256

from drawings import drawing


@pytest.fixture(scope="module")
def tiny():
    return FrozenCLIP.from_spec("tiny-world")


def test_shipped_files_match_their_checksums_and_stay_small():
    folder = tiny_world_dir()
    recorded = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    total = 0
    for name, digest in recorded.items():
        assert sha256(folder / name) == digest, f"{name} differs from its recorded checksum"
        total += (folder / name).stat().st_size
    assert total <= 25 * 2**20


def test_zero_shot_on_heldout_tiny_world(tiny):
    items = heldout_singles(per_class=4)
    acc = zero_shot_accuracy(tiny.encode_image, tiny.encode_text, tiny.preprocess, items, tiny.device)
    assert acc >= 0.85, f"held-out zero-shot top-1 {acc:.3f}"


def _predict(tiny, images):
    names = class_names()
    text = tiny.encode_text([f"a photo of a {n}." for n in names], normalize=True)
    with torch.no_grad():
        img = tiny.encode_image(tiny.images_to_pixels(images), normalize=True)
    return [names[i] for i in (img @ text.T).argmax(-1).tolist()]


@pytest.mark.parametrize("background", [(245, 245, 245), (255, 255, 255), (205, 225, 240)])
def test_pil_drawings_are_recognised(tiny, background):
    truth = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    drawn = [drawing(c, s, 96, background, radius=96 * 0.22) for c in COLOURS for s in SHAPES]
    predicted = _predict(tiny, drawn)
    wrong = [(t, p) for t, p in zip(truth, predicted) if t != p]
    assert len(wrong) <= 1, wrong
    assert all(t.split()[0] == p.split()[0] for t, p in zip(truth, predicted)), "colour confused"


def test_larger_pil_drawings_mostly_recognised(tiny):
    truth = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    drawn = [drawing(c, s, 128, radius=128 * 0.3, centre=(60, 70)) for c in COLOURS for s in SHAPES]
    predicted = _predict(tiny, drawn)
    acc = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    assert acc >= 0.8, list(zip(truth, predicted))
