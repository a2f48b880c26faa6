"""Tiny-world scenes: determinism, masks vs boxes, captions, vocabulary, backgrounds."""
from __future__ import annotations

import colorsys
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from clipheads.core.errors import UserError
from clipheads.core.tinyworld import scene as scene_mod
from clipheads.core.tinyworld.render import MASK_THRESHOLD, coverage, shape_polygon, unit_outline
from clipheads.core.tinyworld.scene import make_scene, make_single, relation
from clipheads.core.tinyworld.vocab import (CATEGORIES, COLOUR_RGB, COLOURS, SHAPES, category_id,
                                            category_name)

SEEDS = range(40)


def _digest(seed: int) -> str:
    s = make_scene(seed)
    h = hashlib.sha256(s.image.tobytes())
    h.update(s.mask.tobytes())
    h.update(s.instance_mask.tobytes())
    h.update(s.caption.encode())
    return h.hexdigest()


def test_same_seed_same_bytes_and_different_seeds_differ():
    assert _digest(7) == _digest(7)
    assert len({_digest(s) for s in range(8)}) == 8


def test_determinism_survives_a_fresh_interpreter_with_other_hash_seed():
    code = ("from clipheads.core.tinyworld.scene import make_scene; import hashlib; s = make_scene(7); "
            "h = hashlib.sha256(s.image.tobytes()); h.update(s.mask.tobytes()); "
            "h.update(s.instance_mask.tobytes()); h.update(s.caption.encode()); print(h.hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == _digest(7)


def test_vocabulary_and_ids_round_trip():
    assert {"red", "green", "blue", "yellow"} <= set(COLOURS)
    assert {"circle", "square", "triangle", "star"} <= set(SHAPES)
    with pytest.raises(TypeError):
        COLOUR_RGB["red"] = (0, 0, 0)  # type: ignore[index]
    for shape in CATEGORIES:
        assert category_name(category_id(shape)) == shape
    assert category_name(0) == "background"
    with pytest.raises(UserError, match="circle"):
        category_id("circel")


def test_every_shape_has_an_outline_inside_the_unit_disc():
    for shape in SHAPES:
        pts = np.asarray(unit_outline(shape))
        assert len(pts) >= 3
        assert np.hypot(pts[:, 0], pts[:, 1]).max() <= 1.0 + 1e-6


def test_coverage_is_antialiased():
    alpha = coverage(shape_polygon("circle", (20.0, 20.0), 10.0), 40)
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert edge.sum() > 20  # fractional coverage along the rim
    assert alpha.max() == pytest.approx(1.0) and alpha.min() == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_and_boxes_agree(seed):
    s = make_scene(seed)
    assert s.image.mode == "RGB" and s.image.size == (96, 96)
    assert s.mask.dtype == np.uint8 and s.mask.shape == (96, 96)
    assert 1 <= len(s.objects) <= 4
    assert set(np.unique(s.instance_mask)) == set(range(len(s.objects) + 1))
    for i, obj in enumerate(s.objects, start=1):
        ys, xs = np.nonzero(s.instance_mask == i)
        x0, y0, x1, y1 = obj.box
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)  # tight box
        assert obj.category_id == 1 + CATEGORIES.index(obj.shape)
        assert np.all(s.mask[s.instance_mask == i] == obj.category_id)
    assert np.all(s.mask[s.instance_mask == 0] == 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_objects_sized_mostly_visible_and_coloured(seed):
    s = make_scene(seed)
    pixels = np.asarray(s.image, dtype=np.float64)
    for i, obj in enumerate(s.objects, start=1):
        assert 0.15 * 96 <= obj.extent <= 0.45 * 96
        poly = np.asarray(shape_polygon(obj.shape, obj.centre, obj.extent / 2, obj.rotation))
        assert poly.min() >= 0 and poly.max() <= 96  # never cut by the image border
        full = coverage(shape_polygon(obj.shape, obj.centre, obj.extent / 2, obj.rotation), 96)
        full_px = (full >= MASK_THRESHOLD).sum()
        assert (s.instance_mask == i).sum() >= scene_mod.MIN_VISIBLE * full_px
        core = (s.instance_mask == i) & (full > 0.999)
        mean = pixels[core].mean(axis=0)
        assert np.abs(mean - np.asarray(COLOUR_RGB[obj.colour])).max() <= scene_mod.COLOUR_JITTER + 1


def _saturation(rgb: np.ndarray) -> np.ndarray:
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)


def test_backgrounds_never_look_like_object_colours():
    for seed in SEEDS:
        s = make_scene(seed)
        rgb = np.asarray(s.image, dtype=np.float64) / 255.0
        far = s.instance_mask == 0
        # Stay two pixels away from objects: edge pixels blend by design.
        for _ in range(2):
            far[1:, :] &= far[:-1, :]; far[:-1, :] &= far[1:, :]
            far[:, 1:] &= far[:, :-1]; far[:, :-1] &= far[:, 1:]
        assert _saturation(rgb[far]).max() < 0.25
    for name, colour in COLOUR_RGB.items():
        assert colorsys.rgb_to_hsv(*(c / 255 for c in colour))[1] > 0.75, name


def test_backgrounds_vary():
    means = {tuple(np.round(np.asarray(make_scene(s).image).reshape(-1, 3).mean(0) / 8)) for s in SEEDS}
    assert len(means) > 20


_PHRASE = r"an? (\w+) (\w+)"
_CAPTION = re.compile(rf"^{_PHRASE}(?: (left of|right of|above|below) {_PHRASE})?"
                      rf"(?: and {_PHRASE}(?: (left of|right of|above|below) {_PHRASE})?)?$")


@pytest.mark.parametrize("seed", SEEDS)
def test_caption_names_objects_in_order_with_true_relations(seed):
    s = make_scene(seed)
    m = _CAPTION.match(s.caption)
    assert m, s.caption
    g = m.groups()
    named = [(g[0], g[1])] + ([(g[3], g[4])] if g[2] else []) + \
            ([(g[5], g[6])] if g[5] else []) + ([(g[8], g[9])] if g[7] else [])
    assert named == [(o.colour, o.shape) for o in s.objects]
    rels = [r for r in (g[2], g[7]) if r]
    for k, rel in enumerate(rels):
        a, b = s.objects[2 * k], s.objects[2 * k + 1]
        dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
        expected = ({"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0})
        assert expected[rel], (s.caption, a.centre, b.centre)
        horizontal = rel in ("left of", "right of")
        assert (abs(dx) >= abs(dy)) == horizontal
    assert len({(o.colour, o.shape) for o in s.objects}) == len(s.objects)
    assert ("an orange" in s.caption) == any(o.colour == "orange" for o in s.objects)


def test_relation_words_follow_image_axes():
    def obj(x, y):
        return scene_mod.SceneObject("red", "circle", 1, (0, 0, 1, 1), (x, y), 10.0, 0.0, (0, 0, 0))
    assert relation(obj(10, 50), obj(80, 50)) == "left of"
    assert relation(obj(80, 50), obj(10, 50)) == "right of"
    assert relation(obj(50, 10), obj(50, 80)) == "above"
    assert relation(obj(50, 80), obj(50, 10)) == "below"


def test_n_objects_exact_range_and_invalid():
    assert all(len(make_scene(s, n_objects=3).objects) == 3 for s in range(5))
    counts = {len(make_scene(s, n_objects=(1, 2)).objects) for s in range(30)}
    assert counts == {1, 2}
    assert len(make_scene(3, n_objects=1).objects) == 1
    assert make_scene(3, n_objects=1).caption.count(" ") == 2
    with pytest.raises(UserError):
        make_scene(0, n_objects=5)
    with pytest.raises(UserError):
        make_scene(0, size=4)


def test_other_sizes():
    s = make_scene(1, size=64)
    assert s.image.size == (64, 64) and s.mask.shape == (64, 64)


@pytest.mark.parametrize("colour,shape", [(c, sh) for c in COLOURS for sh in SHAPES][::5])
def test_make_single(colour, shape):
    s = make_single(3, colour, shape)
    assert len(s.objects) == 1
    obj = s.objects[0]
    assert (obj.colour, obj.shape) == (colour, shape)
    assert s.caption == f"{'an' if colour == 'orange' else 'a'} {colour} {shape}"
    assert obj.extent >= 0.4 * 96
    assert abs(obj.centre[0] - 48) < 10 and abs(obj.centre[1] - 48) < 10
    assert np.array_equal(make_single(3, colour, shape).mask, s.mask)


def test_make_single_unknown_names_suggest():
    with pytest.raises(UserError, match="did you mean: blue"):
        make_single(0, "bleu", "circle")
    with pytest.raises(UserError, match="did you mean: square"):
        make_single(0, "red", "sqare")
