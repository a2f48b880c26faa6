"""Which pixel tiles each stroke can touch, and how to stack them for compositing.

Strokes are thin and short compared with the canvas, so rasterising every stroke at
every pixel wastes almost all memory and time. The canvas is cut into square tiles; a
tile is active for a stroke when the bounding box of one of its polyline segments,
grown by the stroke's reach (half width + filter support), overlaps it. Only those
(segment, tile) overlaps are evaluated, and only touched tiles are composited. All of
this runs without gradient: it selects work, it computes no values.
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


@dataclass(frozen=True)
class ActiveTiles:
    """The work a batch of polylines needs.

    pair_stroke / pair_tile: [A] unique (stroke, tile) pairs, sorted by stroke; each gets
    a coverage value per pixel. seg_start / seg_pair / seg_tile: [T] unique (segment,
    tile) overlaps; seg_start indexes the segment's first vertex in the flattened
    [N * (K+1), 2] vertex array and seg_pair the pair it contributes to. A pixel's
    distance to a stroke is the minimum over that pair's segments only.
    """

    pair_stroke: torch.Tensor
    pair_tile: torch.Tensor
    seg_start: torch.Tensor
    seg_pair: torch.Tensor
    seg_tile: torch.Tensor


@torch.no_grad()
def active_tiles(samples: torch.Tensor, reach: torch.Tensor, grid: TileGrid) -> ActiveTiles:
    """Which tiles each polyline segment (and so each stroke) can touch.

    samples: [N, K+1, 2] polyline vertices per stroke; reach: [N] distance (px) from the
    centre line beyond which a stroke's coverage is treated as zero.
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
    vertex = (torch.arange(n, device=device)[:, None] * k1 + torch.arange(k1 - 1, device=device))[valid]
    span = t1 - t0 + 1
    counts = span[:, 0] * span[:, 1]
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(seg.numel(), device=device) - start[seg]
    tx = t0[seg, 0] + local % span[seg, 0]
    ty = t0[seg, 1] + torch.div(local, span[seg, 0], rounding_mode="floor")
    key = torch.unique(vertex[seg] * grid.count + ty * grid.cols + tx)
    seg_start = torch.div(key, grid.count, rounding_mode="floor")
    seg_tile = key % grid.count
    stroke = torch.div(seg_start, k1, rounding_mode="floor")
    pairs, seg_pair = torch.unique(stroke * grid.count + seg_tile, return_inverse=True)
    return ActiveTiles(
        pair_stroke=torch.div(pairs, grid.count, rounding_mode="floor"),
        pair_tile=pairs % grid.count,
        seg_start=seg_start,
        seg_pair=seg_pair.reshape(-1),
        seg_tile=seg_tile,
    )


@dataclass(frozen=True)
class TileStacks:
    """Active (stroke, tile) pairs regrouped into per-(image, tile) stacks in painting order.

    groups: [G] ids ``b * grid.count + tile`` of tiles that any stroke touches;
    slot: [A] position ``g * depth + rank`` of each pair in a [G, depth] stack, where rank
    orders the strokes of one tile by stroke index; depth: the deepest stack.
    """

    groups: torch.Tensor
    slot: torch.Tensor
    depth: int


@torch.no_grad()
def stack_tiles(stroke_ids: torch.Tensor, tile_ids: torch.Tensor, strokes_per_item: int, tiles: int) -> TileStacks:
    """Group (stroke, tile) pairs by (batch item, tile) so compositing only visits touched tiles."""
    item = torch.div(stroke_ids, max(1, strokes_per_item), rounding_mode="floor")
    group = item * tiles + tile_ids
    order_key = group * max(1, strokes_per_item) + stroke_ids % max(1, strokes_per_item)
    order = torch.argsort(order_key)
    groups, counts = torch.unique_consecutive(group[order], return_counts=True)
    depth = int(counts.max()) if counts.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    g_sorted = torch.repeat_interleave(torch.arange(groups.numel(), device=group.device), counts)
    rank = torch.arange(order.numel(), device=group.device) - starts[g_sorted]
    slot = torch.empty_like(order)
    slot[order] = g_sorted * depth + rank
    return TileStacks(groups=groups, slot=slot, depth=depth)
