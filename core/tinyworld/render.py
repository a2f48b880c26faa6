"""Shape outlines and anti-aliased rasterisation for the tiny world.

Shapes are polygons in a unit frame (centred on the origin, fitting the unit disc), so
one code path draws, rotates and scales all of them. Coverage is rasterised at
`SUPERSAMPLE`x and box-filtered down: edges get fractional alpha, which keeps the
pixels close to what other renderers (and real photos) produce.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from clipheads.core.tinyworld.vocab import check_shape

SUPERSAMPLE = 2
# Pixels whose coverage reaches this count as the object in masks and boxes.
MASK_THRESHOLD = 0.5


def _fit_unit_disc(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Centre on the bounding box and scale so the farthest vertex lies on the unit circle."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    r = max(math.hypot(x - cx, y - cy) for x, y in pts)
    return [((x - cx) / r, (y - cy) / r) for x, y in pts]


def _circle(n: int = 96) -> list[tuple[float, float]]:
    return [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]


def _square() -> list[tuple[float, float]]:
    h = 0.7  # corners on radius 0.99: the square fits the unit disc at any rotation
    return [(-h, -h), (h, -h), (h, h), (-h, h)]


def _triangle() -> list[tuple[float, float]]:
    # Equilateral, apex up (y grows downwards in images), centroid at the origin.
    return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart(n: int = 96) -> list[tuple[float, float]]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))  # flip: lobes up
    return _fit_unit_disc(pts)


def _cross(arm: float = 0.32, reach: float = 0.9) -> list[tuple[float, float]]:
    a, r = arm, reach
    return [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a),
            (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]


_UNIT_OUTLINES: Mapping[str, tuple[tuple[float, float], ...]] = MappingProxyType({
    name: tuple(fn()) for name, fn in (("circle", _circle), ("square", _square),
                                       ("triangle", _triangle), ("star", _star),
                                       ("heart", _heart), ("cross", _cross))})


def unit_outline(shape: str) -> tuple[tuple[float, float], ...]:
    """The shape's polygon in the unit frame (centred, inside the unit disc)."""
    return _UNIT_OUTLINES[check_shape(shape)]


def shape_polygon(shape: str, centre: tuple[float, float], radius: float,
                  rotation_deg: float = 0.0) -> list[tuple[float, float]]:
    """Polygon vertices in pixel coordinates: the unit outline rotated, scaled, moved."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    cx, cy = centre
    return [(cx + radius * (c * x - s * y), cy + radius * (s * x + c * y))
            for x, y in unit_outline(shape)]


def coverage(polygon: list[tuple[float, float]], size: int) -> np.ndarray:
    """Fractional pixel coverage (float32 HxW in [0, 1]) of a polygon on a size x size grid."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in polygon],
                                   fill=255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def composite(background: np.ndarray, layers: list[tuple[np.ndarray, tuple[int, int, int]]]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Paint (alpha, rgb) layers in order over a float HxWx3 background.

    Returns the uint8 image and an instance mask (0 = background, i = layers[i - 1]);
    a later layer owns the pixels where it reaches `MASK_THRESHOLD`, like paint.
    """
    img = background.astype(np.float32).copy()
    inst = np.zeros(background.shape[:2], dtype=np.uint8)
    for i, (alpha, rgb) in enumerate(layers, start=1):
        a = alpha[..., None]
        img = img * (1.0 - a) + np.asarray(rgb, dtype=np.float32) * a
        inst[alpha >= MASK_THRESHOLD] = i
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), inst


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight (x0, y0, x1, y1) pixel-edge box of a boolean mask, or None when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
