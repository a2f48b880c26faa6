"""Anti-aliased stroke coverage as a function of distance to the centre line.

A pixel filter of half-width about half a pixel, integrated across a band of the
stroke's width, gives the fraction of the pixel the stroke covers. Treating the curve
locally as straight turns that into a difference of two filter CDFs evaluated at the
band's edges. The box filter is what vector renderers (cairo, diffvg's default)
approximate but has zero gradient once a pixel is fully outside; the tent and logistic
filters have the same variance but reach further, so optimisation sees pixels just
outside the stroke. Logistic is the default: its gradient never vanishes exactly.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

FilterName = Literal["box", "tent", "logistic"]
FILTERS: tuple[str, ...] = ("box", "tent", "logistic")

# Logistic tails are cut (treated as zero coverage) this many scale units out: ~6e-6.
_LOGISTIC_CUTOFF = 12.0


def filter_cdf(x: torch.Tensor, name: FilterName, radius: float) -> torch.Tensor:
    """CDF of the 1D pixel filter; every filter has the variance of a box of half-width ``radius``."""
    if name == "box":
        return ((x + radius) / (2 * radius)).clamp(0.0, 1.0)
    if name == "tent":
        y = (x / (radius * math.sqrt(2.0))).clamp(-1.0, 1.0)
        return 0.5 + y - 0.5 * y * y.abs()
    if name == "logistic":
        return torch.sigmoid(x * (math.pi / radius))
    raise ValueError(f"unknown pixel filter {name!r}; expected one of {FILTERS}")


def filter_support(name: FilterName, radius: float) -> float:
    """How far (px) beyond a stroke's edge coverage is still non-negligible; used for culling."""
    if name == "box":
        return radius
    if name == "tent":
        return radius * math.sqrt(2.0)
    if name == "logistic":
        return _LOGISTIC_CUTOFF * radius / math.pi
    raise ValueError(f"unknown pixel filter {name!r}; expected one of {FILTERS}")


def stroke_coverage(
    distance: torch.Tensor, width: torch.Tensor, name: FilterName = "logistic", radius: float = 0.5
) -> torch.Tensor:
    """Coverage in [0, 1] of pixels at ``distance`` from the centre line of a stroke ``width`` wide."""
    half = 0.5 * width
    return filter_cdf(half - distance, name, radius) - filter_cdf(-half - distance, name, radius)
