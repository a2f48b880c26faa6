"""CLIPasso's augmentations as homographies, applied identically to sketch and target.

torchvision's RandomPerspective(0.5, p=1) followed by RandomResizedCrop(scale 0.8,
ratio 1) is one projective map from output to input coordinates, so one `grid_sample`
per view does both, on a whole batch, with gradients to the sketch pixels. The maps are
plain tensors: a fixed set can be drawn once per image (and the target's features for
it cached), or fresh ones every iteration.

Coordinates are normalised to [-1, 1] (x right, y down) with ``align_corners=False``.
Corner offsets are continuous here (torchvision draws integer pixels).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipheads.core.errors import UserError


def homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] projective maps sending the 4 points src[N, 4, 2] onto dst[N, 4, 2]."""
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # [N, 8, 8]
    b = torch.cat([u, v], dim=1)            # [N, 8]
    h = torch.linalg.solve(a.double(), b.double()).to(src.dtype)
    return torch.cat([h, h.new_ones(n, 1)], dim=1).reshape(n, 3, 3)


CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def sample_views(n: int, perspective: float = 0.5, crop_scale: float = 0.8,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, 3, 3] maps from output to input coordinates: random perspective, then random square crop."""
    if not 0.0 <= perspective < 1.0:
        raise UserError(f"loss.perspective must be in [0, 1), got {perspective}")
    if not 0.0 < crop_scale <= 1.0:
        raise UserError(f"loss.crop_scale must be in (0, 1], got {crop_scale}")
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    # Each corner moves inwards by up to `perspective` of the half-size, per axis.
    moved = CORNERS + inward * torch.rand(n, 4, 2, generator=generator) * perspective
    # The perspective output shows input point `corner` at `moved`: sampling maps moved -> corner.
    warp = homography(moved, CORNERS.expand(n, 4, 2))
    side = math.sqrt(crop_scale)
    centre = (2 * torch.rand(n, 2, generator=generator) - 1) * (1 - side)
    crop = torch.zeros(n, 3, 3)
    crop[:, 0, 0] = crop[:, 1, 1] = side
    crop[:, :2, 2] = centre
    crop[:, 2, 2] = 1.0
    return warp @ crop


def apply_views(images: torch.Tensor, views: torch.Tensor, size: tuple[int, int] | None = None,
                fill: float = 0.0) -> torch.Tensor:
    """Warp images[N, C, H, W] by views[N, 3, 3] (output -> input); outside is `fill`."""
    if images.shape[0] != views.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {views.shape[0]} views")
    h, w = size or tuple(images.shape[-2:])
    dtype, device = images.dtype, images.device
    ys = (torch.arange(h, dtype=dtype, device=device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=dtype, device=device) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)
    mapped = base @ views.to(dtype=dtype, device=device).transpose(1, 2)  # [N, h*w, 3]
    grid = (mapped[..., :2] / mapped[..., 2:].clamp_min(1e-8)).reshape(-1, h, w, 2)
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill
