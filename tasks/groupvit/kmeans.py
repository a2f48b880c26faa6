"""The grouping head's `assign: kmeans` first stage: which group each token joins is decided
by soft k-means over the frozen backbone's tokens (colour/appearance plus grid position),
not by a learned query-key product.

Why: on the tiny world the learned first-stage assignment collapses to figure/ground
(docs/groupvit.md records the attempts), while the frozen tokens themselves already
separate differently coloured objects (centred cosine 0.98 within a shape, ~0.5 across).
The rest of the grouping block (cross-attention of the group tokens, the straight-through
hard assignment, `proj(A v) + g`, the MLP) and everything after it stay learned; the
partition itself is a fixed function of the frozen features, so it cannot collapse.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipheads.core.precision import full_precision


def grid_positions(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[h*w, 2] (y, x) token centres in [-1, 1], row-major like the token sequence."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=device), torch.linspace(-1, 1, w, device=device),
                            indexing="ij")
    return torch.stack([ys, xs], dim=-1).reshape(h * w, 2)


def kmeans_features(tokens: torch.Tensor, grid: tuple[int, int], position_weight: float) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, C+2] points: layer-normalised, centred over the image's
    tokens and unit-length (so distances are cosines), with weighted grid positions appended."""
    f = F.layer_norm(tokens.float(), tokens.shape[-1:])
    f = F.normalize(f - f.mean(dim=1, keepdim=True), dim=-1)
    pos = grid_positions(grid, f.device).expand(f.shape[0], -1, -1)
    return torch.cat([f, position_weight * pos], dim=-1)


def kmeans_logits(tokens: torch.Tensor, grid: tuple[int, int], groups: int, position_weight: float = 0.5,
                  iters: int = 5, scale: float = 20.0) -> torch.Tensor:
    """[B, groups, N] assignment logits: `-scale x squared distance` to centres seeded on a
    sqrt(groups) x sqrt(groups) grid of the image (average of the tokens in each cell) and
    refined by `iters` soft k-means steps. Deterministic, no gradient, always fp32."""
    side = math.isqrt(groups)
    if side * side != groups:
        raise ValueError(f"k-means seeds lie on a square grid: {groups} groups is not a square number")
    with torch.no_grad(), full_precision(tokens.device):
        f = kmeans_features(tokens, grid, position_weight)
        b, n, c = f.shape
        centres = F.adaptive_avg_pool2d(f.transpose(1, 2).reshape(b, c, *grid), side).flatten(2).transpose(1, 2)
        for _ in range(iters):
            weights = (-scale * torch.cdist(centres, f).pow(2)).softmax(dim=1)       # [B, G, N]
            centres = weights @ f / weights.sum(dim=-1, keepdim=True).clamp(min=1e-6)
        return -scale * torch.cdist(centres, f).pow(2)


__all__ = ["grid_positions", "kmeans_features", "kmeans_logits"]
