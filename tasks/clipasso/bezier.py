"""Cubic Bézier evaluation.

The rasteriser approximates each curve by a dense polyline; sampling with the Bernstein
basis as a small matrix product keeps the map from control points to samples linear,
so autograd carries gradients to all four control points cheaply.
"""
from __future__ import annotations

import torch


def bernstein_matrix(segments: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[segments + 1, 4] cubic Bernstein weights at uniformly spaced parameters t in [0, 1]."""
    t = torch.linspace(0.0, 1.0, segments + 1, dtype=dtype, device=device)
    u = 1.0 - t
    return torch.stack([u**3, 3 * u**2 * t, 3 * u * t**2, t**3], dim=-1)


def sample_cubic(points: torch.Tensor, segments: int) -> torch.Tensor:
    """Points on cubic curves: [..., 4, 2] control points -> [..., segments + 1, 2]."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    basis = bernstein_matrix(segments, points.dtype, points.device)
    return torch.einsum("kc,...cd->...kd", basis, points)
