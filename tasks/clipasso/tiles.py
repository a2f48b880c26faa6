"""Which (stroke, pixel tile) pairs can a stroke touch.

Strokes are thin and short compared with the canvas, so rasterising every stroke at
every pixel wastes almost all memory. The canvas is cut into square tiles; a tile is
active for a stroke when the bounding box of one of its polyline segments, grown by
the stroke's reach (half width + filter support), overlaps it. Only active pairs are
ever evaluated. Culling runs without gradient: it selects work, it computes no values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileGrid:
    """A canvas of ``height`` x ``width`` pixels split into ``tile`` x ``tile`` blocks (padded)."""

    height: int
    width: int
    tile: int = 8

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def pixels_per_tile(self) -> int:
        return self.tile * self.tile

    def pixel_offsets(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[tile*tile, 2] pixel-centre (x, y) offsets inside a tile, row-major."""
        r = torch.arange(self.tile, dtype=dtype, device=device) + 0.5
        ys, xs = torch.meshgrid(r, r, indexing="ij")
        return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)

    def origins(self, tile_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[A, 2] top-left (x, y) pixel corner of each tile id."""
        x = (tile_ids % self.cols) * self.tile
        y = torch.div(tile_ids, self.cols, rounding_mode="floor") * self.tile
        return torch.stack([x, y], dim=-1).to(dtype)

    def untile(self, values: torch.Tensor) -> torch.Tensor:
        """[..., count * tile*tile] tile-major values -> [..., height, width] image layout."""
        lead = values.shape[:-1]
        t = self.tile
        v = values.reshape(*lead, self.rows, self.cols, t, t)
        v = v.movedim(-2, -3).reshape(*lead, self.rows * t, self.cols * t)
        return v[..., : self.height, : self.width]


@torch.no_grad()
def active_tiles(samples: torch.Tensor, reach: torch.Tensor, grid: TileGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique (stroke, tile) pairs a polyline can touch, sorted by stroke.

    samples: [N, K+1, 2] polyline vertices per stroke; reach: [N] distance (px) from the
    centre line beyond which a stroke's coverage is treated as zero.
    Returns (stroke_ids [A], tile_ids [A]) as int64.
    """
    n, k1, _ = samples.shape
    device = samples.device
    a, b = samples[:, :-1], samples[:, 1:]
    grow = reach[:, None, None]
    lo = torch.minimum(a, b) - grow
    hi = torch.maximum(a, b) + grow
    size = torch.tensor([grid.width, grid.height], dtype=samples.dtype, device=device)
    # Pixel i is touched when its centre i + 0.5 lies inside [lo, hi]; clamp before the
    # integer cast so far-away (or huge) coordinates cannot overflow.
    first = torch.minimum(torch.ceil(lo - 0.5).clamp(min=0.0), size).long()
    last = torch.minimum(torch.floor(hi - 0.5), size - 1).clamp(min=-1.0).long()
    valid = (first <= last).all(dim=-1)
    t0 = torch.div(first, grid.tile, rounding_mode="floor")[valid]
    t1 = torch.div(last, grid.tile, rounding_mode="floor")[valid]
    owner = torch.arange(n, device=device)[:, None].expand(n, k1 - 1)[valid]
    span = t1 - t0 + 1
    counts = span[:, 0] * span[:, 1]
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    if seg.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(seg.numel(), device=device) - start[seg]
    tx = t0[seg, 0] + local % span[seg, 0]
    ty = t0[seg, 1] + torch.div(local, span[seg, 0], rounding_mode="floor")
    key = owner[seg] * grid.count + ty * grid.cols + tx
    key = torch.unique(key)  # sorted, so pairs come grouped by stroke
    return torch.div(key, grid.count, rounding_mode="floor"), key % grid.count
