"""Tiny-world videos: determinism, motion matching the caption, splits."""
from __future__ import annotations

import re

import numpy as np
import pytest

from clipheads.core.errors import UserError
from clipheads.core.tinyworld.splits import BLOCK, split_of_seed, split_seeds
from clipheads.core.tinyworld.video import DIRECTIONS, make_video
from clipheads.core.tinyworld.vocab import COLOURS, SHAPES

SEEDS = range(16)


def test_same_seed_same_frames():
    a, b = make_video(5), make_video(5)
    assert a.frames.tobytes() == b.frames.tobytes() and a.captions == b.captions
    assert make_video(6).frames.tobytes() != a.frames.tobytes()


@pytest.mark.parametrize("seed", SEEDS)
def test_motion_matches_caption(seed):
    clip = make_video(seed, n_frames=12, size=80)
    assert clip.frames.shape == (12, 80, 80, 3) and clip.frames.dtype == np.uint8
    assert 1 <= len(clip.movers) <= 2
    phrase = r"an? (\w+) (\w+) moving (\w+)"
    m = re.fullmatch(rf"{phrase}(?: and {phrase})?", clip.caption)
    assert m, clip.caption
    g = [x for x in m.groups() if x]
    said = [tuple(g[i:i + 3]) for i in range(0, len(g), 3)]
    assert said == [(mv.colour, mv.shape, mv.direction) for mv in clip.movers]
    for k, mv in enumerate(clip.movers, start=1):
        assert mv.colour in COLOURS and mv.shape in SHAPES and mv.direction in DIRECTIONS
        # Measure the motion on the pixels, not on the generator's own bookkeeping.
        centres = []
        for t in range(len(clip.frames)):
            ys, xs = np.nonzero(clip.instance_masks[t] == k)
            assert xs.size > 20  # stays visible in every frame
            centres.append((xs.mean(), ys.mean()))
        (x0, y0), (x1, y1) = centres[0], centres[-1]
        dx, dy = x1 - x0, y1 - y0
        moved = {"left": -dx, "right": dx, "up": -dy, "down": dy}[mv.direction]
        sideways = abs(dy) if mv.direction in ("left", "right") else abs(dx)
        assert moved > 0.3 * 80 and sideways < 2.0, (mv, dx, dy)
        # Paraphrases all name the same motion.
        assert all(f"{mv.colour} {mv.shape}" in c and mv.direction in c for c in clip.captions)
    assert len(set(clip.captions)) == 3


def test_two_movers_never_touch():
    two = [make_video(s) for s in range(30)]
    two = [c for c in two if len(c.movers) == 2]
    assert two, "expected some two-object clips"
    for clip in two:
        for t in range(len(clip.frames)):
            a = clip.instance_masks[t] == 1
            b = clip.instance_masks[t] == 2
            grown = a.copy()
            grown[1:] |= a[:-1]; grown[:-1] |= a[1:]; grown[:, 1:] |= a[:, :-1]; grown[:, :-1] |= a[:, 1:]
            assert not (grown & b).any()


def test_bad_arguments():
    with pytest.raises(UserError):
        make_video(0, n_frames=1)
    with pytest.raises(UserError):
        make_video(0, size=8)


def test_splits_are_disjoint_and_stable():
    train = set(split_seeds("train", 1000))
    val = set(split_seeds("val", 1000))
    test = set(split_seeds("test", 1000))
    assert not (train & val) and not (train & test) and not (val & test)
    assert split_seeds("train", 3) == [0, 1, 2]
    assert split_seeds("val", 2) == [BLOCK, BLOCK + 1]
    assert split_seeds("train", 2, start=BLOCK - 2) == [BLOCK - 2, BLOCK - 1]
    assert all(split_of_seed(s) == "val" for s in val)
    with pytest.raises(UserError):
        split_seeds("train", 3, start=BLOCK - 2)  # would run into the val block
    with pytest.raises(UserError, match="did you mean: train"):
        split_seeds("trian", 3)
    with pytest.raises(UserError):
        split_of_seed(-1)
