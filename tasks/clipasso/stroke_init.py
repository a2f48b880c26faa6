"""Where CLIPasso's strokes start: sampling from a saliency map and jittered control points.

Sampling without replacement spreads strokes over distinct salient pixels; a softmax
with low temperature over the positive pixels concentrates them on the most salient
ones. When the map cannot supply enough distinct pixels (flat, all zero, too sparse)
the sampler falls back to uniform pixels instead of failing or producing NaN.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

from clipheads.core.errors import UserError

ArrayLike = Union[np.ndarray, torch.Tensor]


def placement_weights(prob_map: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
    """[H*W] float64 sampling weights: softmax(map / T) on positive pixels, or uniform as fallback."""
    m = torch.nan_to_num(prob_map.to(torch.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    positive = m > 0
    if int(positive.sum()) < n:
        return torch.ones_like(m)
    logits = m[positive] / temperature
    w = torch.zeros_like(m)
    # Floor keeps every positive pixel drawable without replacement even if exp underflows.
    w[positive] = torch.softmax(logits, dim=0).clamp_min(1e-200)
    return w


def sample_stroke_starts(
    prob_map: ArrayLike,
    n: int,
    temperature: float = 0.3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[n, 2] distinct pixel centres (x, y) drawn without replacement from ``prob_map`` [H, W]."""
    pm = torch.as_tensor(np.asarray(prob_map) if not isinstance(prob_map, torch.Tensor) else prob_map.detach().cpu())
    if pm.dim() != 2:
        raise UserError(f"saliency map must be [H, W], got shape {list(pm.shape)}")
    h, w = pm.shape
    if not 1 <= n <= h * w:
        raise UserError(f"cannot draw {n} distinct stroke starts from a {h}x{w} map")
    if temperature <= 0:
        raise UserError(f"softmax temperature must be > 0, got {temperature}")
    weights = placement_weights(pm, n, temperature)
    idx = torch.multinomial(weights, n, replacement=False, generator=generator)
    rows = torch.div(idx, w, rounding_mode="floor")
    return torch.stack([idx % w, rows], dim=-1).to(torch.float32) + 0.5


def init_strokes(
    starts: torch.Tensor,
    canvas: int | tuple[int, int] = 224,
    radius: float = 0.025,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[S, 4, 2] control points: P0 = start, each next point uniform within +-radius of the previous.

    ``radius`` is a fraction of the canvas (height, width), as in the paper (0.025), so
    x moves by at most radius * width px and y by radius * height px. Points are not
    clamped to the canvas.
    """
    if starts.dim() != 2 or starts.shape[-1] != 2:
        raise UserError(f"stroke starts must be [S, 2], got shape {list(starts.shape)}")
    height, width = (canvas, canvas) if isinstance(canvas, int) else canvas
    scale = torch.tensor([width, height], dtype=starts.dtype, device=starts.device) * radius
    steps = torch.rand(starts.shape[0], 3, 2, generator=generator, dtype=starts.dtype, device=starts.device)
    steps = (2 * steps - 1) * scale
    return torch.cat([starts[:, None, :], starts[:, None, :] + steps.cumsum(dim=1)], dim=1)
