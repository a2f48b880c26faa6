"""The one position-embedding resize: a grid of learned patch positions, bicubically
resampled to another grid when an image of another size comes in.

Models disagree on one detail that moves numbers: open_clip (and so every CLIP tower
here) resizes with `antialias=True`, which in PyTorch means PIL's bicubic kernel
(a=-0.5) even when enlarging; NVlabs GroupViT and its transformers port use the plain
kernel (a=-0.75, `antialias=False`). Callers say which, so each model matches its own
reference code exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_grid_positions(positions: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                          antialias: bool) -> torch.Tensor:
    """`positions` [old_h*old_w, C] -> [new_h*new_w, C] (returned unchanged when equal)."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return positions
    channels = positions.shape[-1]
    grid = positions.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False,
                         antialias=antialias)
    return grid.to(positions.dtype).permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], channels)
