"""Backgrounds for tiny-world scenes: plain, gradient and low-contrast noise.

Varied backgrounds stop a model from learning "object = anything not white", but they
must never look like an object colour: every background colour is drawn with low HSV
saturation (at most `MAX_SATURATION`) and high value, while object colours are
saturated, so colour words stay unambiguous.
"""
from __future__ import annotations

import colorsys

import numpy as np

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noise")
MAX_SATURATION = 0.16
VALUE_RANGE = (0.68, 0.97)


def _light_colour(rng: np.random.Generator) -> np.ndarray:
    h = rng.random()
    s = rng.uniform(0.0, MAX_SATURATION)
    v = rng.uniform(*VALUE_RANGE)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = _light_colour(rng), _light_colour(rng)
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = xs * np.cos(theta) + ys * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return a * (1 - t[..., None]) + b * t[..., None]


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _light_colour(rng)
    cells = int(rng.integers(3, 9))
    coarse = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    # Bilinear upsampling of a coarse grid: smooth blotches, like paper or a wall.
    idx = np.linspace(0, cells - 1, size, dtype=np.float32)
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    f = idx - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i1] * f[:, None]
    smooth = rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]
    fine = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    # Luminance-only texture: the same offset on all channels adds no saturation.
    lum = rng.uniform(6, 14) * smooth + rng.uniform(1, 4) * fine
    return base[None, None, :] + lum[..., None]


def make_background(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """A float32 size x size x 3 background in [0, 255]; `kind` is drawn when None."""
    kind = kind if kind is not None else BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    if kind == "plain":
        out = np.broadcast_to(_light_colour(rng), (size, size, 3)).copy()
    elif kind == "gradient":
        out = _gradient(rng, size)
    elif kind == "noise":
        out = _noise(rng, size)
    else:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")
    return np.clip(out, 0, 255).astype(np.float32)
