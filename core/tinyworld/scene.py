"""Deterministic tiny-world scenes: coloured shapes with masks, boxes and a caption.

A scene is a pure function of its seed (one `numpy.random.Generator` per scene), so the
same seed gives the same bytes on every machine and exports are reproducible from one
number. Masks are semantic by *shape* (category id = 1 + index into `CATEGORIES`);
colours live in the caption and the per-object records.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipheads.core.errors import UserError
from clipheads.core.tinyworld.background import make_background
from clipheads.core.tinyworld.render import composite, coverage, mask_box, shape_polygon, MASK_THRESHOLD
from clipheads.core.tinyworld.vocab import (COLOUR_RGB, COLOURS, SHAPES, check_colour, check_shape,
                                            category_id)

MIN_SIZE = 16
EXTENT_RANGE = (0.15, 0.45)   # object diameter as a fraction of the image side
MIN_VISIBLE = 0.7             # an occluded object keeps at least this much of itself
COLOUR_JITTER = 14            # +- per channel, keeps the hue
MAX_OBJECTS = 4
UPRIGHT_FRACTION = 0.3        # objects drawn unrotated, as people (and PIL sketches) draw them
MAX_RESTARTS = 100


@dataclass(frozen=True)
class SceneObject:
    """One drawn object; `box` is (x0, y0, x1, y1) around its visible pixels."""

    colour: str
    shape: str
    category_id: int
    box: tuple[float, float, float, float]
    centre: tuple[float, float]
    extent: float
    rotation: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """An image with its semantic mask (by shape), instance mask, objects and caption.

    `instance_mask` value i (1-based) is `objects[i - 1]`; 0 is background in both masks.
    """

    seed: int
    image: Image.Image
    mask: np.ndarray
    instance_mask: np.ndarray
    objects: tuple[SceneObject, ...]
    caption: str


def article(word: str) -> str:
    """'an' before a vowel sound ('an orange star'), else 'a'."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def describe(obj: SceneObject) -> str:
    """'a red circle' / 'an orange star'."""
    return f"{article(obj.colour)} {obj.colour} {obj.shape}"


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b`, from their centres along the dominant axis."""
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def scene_caption(objects: tuple[SceneObject, ...]) -> str:
    """'a red circle left of a blue star', pairs joined by 'and', a lone tail listed."""
    parts = []
    for i in range(0, len(objects), 2):
        if i + 1 < len(objects):
            a, b = objects[i], objects[i + 1]
            parts.append(f"{describe(a)} {relation(a, b)} {describe(b)}")
        else:
            parts.append(describe(objects[i]))
    return " and ".join(parts)


def jitter_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """The colour's RGB with mild independent per-channel noise."""
    base = np.asarray(COLOUR_RGB[colour], dtype=np.int64)
    out = np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
    return int(out[0]), int(out[1]), int(out[2])


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise UserError(f"tiny-world image size must be an integer >= {MIN_SIZE}, got {size!r}; "
                        "pass a larger size")


def _n_range(n_objects: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, (int, np.integer)) else n_objects
    if not 1 <= lo <= hi <= MAX_OBJECTS:
        raise UserError(f"n_objects must be an int or (lo, hi) range within 1..{MAX_OBJECTS}, "
                        f"got {n_objects!r}")
    return int(lo), int(hi)


def _pick_pairs(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n distinct (colour, shape) pairs, so every caption phrase names one object."""
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    idx = rng.choice(len(combos), size=n, replace=False)
    return [combos[int(i)] for i in idx]


def _place(rng: np.random.Generator, size: int, extent_frac: float) -> tuple[float, float, float]:
    """A centre keeping the whole (rotated) shape inside the image, and its radius."""
    r = extent_frac * size / 2.0
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    return cx, cy, r


def _visible_enough(alphas: list[np.ndarray], inst: np.ndarray) -> bool:
    for i, a in enumerate(alphas, start=1):
        full = int((a >= MASK_THRESHOLD).sum())
        if full == 0 or (inst == i).sum() < MIN_VISIBLE * full:
            return False
    return True


def _separated(placed: list[tuple[str, float, float, float]], size: int) -> bool:
    """Placement rules over (colour, cx, cy, radius) records.

    Related pairs (0-1, 2-3) are apart enough for left/right/above/below to be clear, and
    two objects of one colour never touch (they would read as a single blob).
    """
    for i in range(0, len(placed) - 1, 2):
        (_, ax, ay, _), (_, bx, by, _) = placed[i], placed[i + 1]
        if max(abs(ax - bx), abs(ay - by)) < 0.15 * size:
            return False
    for i, (ci, xi, yi, ri) in enumerate(placed):
        for cj, xj, yj, rj in placed[i + 1:]:
            if ci == cj and np.hypot(xi - xj, yi - yj) < ri + rj + 1:
                return False
    return True


def _compose(rng: np.random.Generator, seed: int, size: int,
             pairs: list[tuple[str, str]], extent_range: tuple[float, float],
             centre_range: tuple[float, float] | None = None) -> Scene:
    background = make_background(rng, size)
    for _restart in range(MAX_RESTARTS):  # retries draw from the same generator: still deterministic
        alphas: list[np.ndarray] = []
        layers: list[tuple[np.ndarray, tuple[int, int, int]]] = []
        meta = []
        ok = True
        for colour, shape in pairs:
            for _attempt in range(30):
                frac = rng.uniform(*extent_range)
                cx, cy, r = _place(rng, size, frac)
                if centre_range is not None:
                    cx, cy = (size / 2 + rng.uniform(*centre_range) * size,
                              size / 2 + rng.uniform(*centre_range) * size)
                upright = shape == "circle" or rng.random() < UPRIGHT_FRACTION
                rot = 0.0 if upright else float(rng.uniform(0, 360))
                rgb = jitter_rgb(rng, colour)
                alpha = coverage(shape_polygon(shape, (cx, cy), r, rot), size)
                _, inst = composite(background, layers + [(alpha, rgb)])
                if (_visible_enough(alphas + [alpha], inst)
                        and _separated([(m[0], m[2], m[3], m[4] / 2) for m in meta]
                                      + [(colour, cx, cy, r)], size)):
                    alphas.append(alpha)
                    layers.append((alpha, rgb))
                    meta.append((colour, shape, cx, cy, 2 * r, rot, rgb))
                    break
            else:
                ok = False
                break
        if ok:
            break
    else:
        raise RuntimeError(f"tiny world: could not place {len(pairs)} objects in a {size}px scene "
                           f"(seed {seed}); this is a generator bug, please report it")
    pixels, inst = composite(background, layers)
    objects = []
    for i, (colour, shape, cx, cy, extent, rot, rgb) in enumerate(meta, start=1):
        box = mask_box(inst == i)
        assert box is not None  # guaranteed by _visible_enough
        objects.append(SceneObject(colour=colour, shape=shape, category_id=category_id(shape),
                                   box=box, centre=(float(cx), float(cy)), extent=float(extent),
                                   rotation=rot, rgb=rgb))
    lut = np.zeros(256, dtype=np.uint8)
    for i, obj in enumerate(objects, start=1):
        lut[i] = obj.category_id
    objs = tuple(objects)
    return Scene(seed=seed, image=Image.fromarray(pixels, "RGB"), mask=lut[inst],
                 instance_mask=inst, objects=objs, caption=scene_caption(objs))


def make_scene(seed: int, size: int = 96, n_objects: int | tuple[int, int] = (1, MAX_OBJECTS)) -> Scene:
    """A random scene of `n_objects` (an int, or an inclusive (lo, hi) range) shapes."""
    _check_size(size)
    lo, hi = _n_range(n_objects)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(lo, hi + 1))
    return _compose(rng, seed, size, _pick_pairs(rng, n), EXTENT_RANGE)


SINGLE_EXTENT = (0.4, 0.65)


def make_single(seed: int, colour: str, shape: str, size: int = 96,
                extent: tuple[float, float] = SINGLE_EXTENT) -> Scene:
    """One large, roughly centred object of the given colour and shape (zero-shot probes).
    `extent` bounds the object's diameter as a fraction of the side (at most 0.8, so the
    off-centre object stays inside the image)."""
    _check_size(size)
    if not 0 < extent[0] <= extent[1] <= 0.8:
        raise UserError(f"make_single: extent {extent} must satisfy 0 < lo <= hi <= 0.8")
    pair = (check_colour(colour), check_shape(shape))
    rng = np.random.default_rng(seed)
    return _compose(rng, seed, size, [pair], extent, centre_range=(-0.08, 0.08))
