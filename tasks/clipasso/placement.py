"""Initial strokes of every seed: starts sampled from the placement map, chained control points.

Each seed has its own generator (seed + s), so a seed's initialisation does not depend
on how many seeds run beside it.
"""
from __future__ import annotations

import torch

from clipheads.core.errors import UserError

from .config import InitConfig, StrokeConfig
from .stroke_init import init_strokes, sample_stroke_starts
from .strokes import Strokes

INIT_METHODS: tuple[str, ...] = ("saliency", "random")


def initial_strokes(placement: torch.Tensor | None, size: tuple[int, int], strokes: StrokeConfig,
                    init: InitConfig, seeds: list[int]) -> Strokes:
    """[len(seeds), count] strokes; `placement` None means uniform starts (init.method=random)."""
    height, width = size
    if strokes.count > height * width:
        raise UserError(f"{strokes.count} strokes need at least that many canvas pixels; "
                        f"the canvas is {width}x{height}: raise strokes.canvas")
    prob = placement if placement is not None else torch.ones(height, width)
    points = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        starts = sample_stroke_starts(prob, strokes.count, init.temperature, generator=g)
        points.append(init_strokes(starts, (height, width), init.radius, generator=g))
    pts = torch.stack(points)
    b, s = pts.shape[:2]
    colour = torch.tensor(strokes.colour, dtype=pts.dtype).expand(b, s, 3).clone()
    return Strokes(pts, torch.full((b, s), float(strokes.width)), colour, torch.ones(b, s))


def random_strokes(count: int, size: tuple[int, int], width: float, batch: int = 1,
                   generator: torch.Generator | None = None) -> Strokes:
    """Baseline: black strokes whose four control points are uniform over the canvas."""
    height, width_px = size
    scale = torch.tensor([width_px, height], dtype=torch.float32)
    pts = torch.rand(batch, count, 4, 2, generator=generator) * scale
    return Strokes.black(pts, width)
