"""Tile culling and stacking behind the rasteriser: nothing reachable is culled, order is kept."""
from __future__ import annotations

import torch

from clipheads.tasks.clipasso.bezier import sample_cubic
from clipheads.tasks.clipasso.tiles import TileGrid, active_tiles, stack_tiles


def test_untile_inverts_tiling() -> None:
    grid = TileGrid(13, 21, tile=4)
    img = torch.arange(2 * 13 * 21, dtype=torch.float32).reshape(2, 13, 21)
    padded = torch.zeros(2, grid.rows * 4, grid.cols * 4)
    padded[:, :13, :21] = img
    tiles = padded.reshape(2, grid.rows, 4, grid.cols, 4).permute(0, 1, 3, 2, 4).reshape(2, -1)
    assert torch.equal(grid.untile(tiles), img)
    origin = grid.origins(torch.tensor([grid.cols + 2]), torch.float32)
    assert origin.tolist() == [[8.0, 4.0]]
    assert grid.pixel_offsets(torch.float32, torch.device("cpu"))[:2].tolist() == [[0.5, 0.5], [1.5, 0.5]]


def test_every_pixel_within_reach_is_in_an_active_tile() -> None:
    g = torch.Generator().manual_seed(0)
    grid = TileGrid(40, 50, tile=8)
    pts = torch.rand(6, 4, 2, generator=g) * torch.tensor([70.0, 60.0]) - 10  # some outside the canvas
    samples = sample_cubic(pts, 16)
    reach = 1 + 3 * torch.rand(6, generator=g)
    work = active_tiles(samples, reach, grid)
    active = torch.zeros(6, grid.count, dtype=torch.bool)
    active[work.pair_stroke, work.pair_tile] = True
    # Brute force: distance from every pixel centre to every segment.
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(50) + 0.5, indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    tile_of_pixel = ((ys // 8) * grid.cols + xs // 8).long().reshape(-1)
    for s in range(6):
        a, b = samples[s, :-1], samples[s, 1:]
        t = (((p - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        d = (p - a - t[..., None] * (b - a)).norm(dim=-1).amin(-1)
        near = d <= reach[s]
        assert active[s, tile_of_pixel[near]].all()
        assert active[s].sum() < grid.count  # and culling does cull
    # Each overlap belongs to the pair with its stroke and tile.
    assert torch.equal(work.pair_tile[work.seg_pair], work.seg_tile)
    assert torch.equal(work.pair_stroke[work.seg_pair], torch.div(work.seg_start, 17, rounding_mode="floor"))


def test_stacks_keep_painting_order() -> None:
    # Two items of 3 strokes; pairs given in arbitrary order.
    stroke_ids = torch.tensor([5, 0, 2, 1, 3, 2, 4])
    tile_ids = torch.tensor([7, 7, 7, 1, 7, 1, 1])
    st = stack_tiles(stroke_ids, tile_ids, strokes_per_item=3, tiles=10)
    assert st.groups.tolist() == [1, 7, 11, 17]  # item * tiles + tile
    assert st.depth == 2
    table = torch.full((4 * st.depth,), -1)
    table[st.slot] = stroke_ids
    assert table.reshape(4, 2).tolist() == [[1, 2], [0, 2], [4, -1], [3, 5]]


def test_nothing_on_canvas_gives_no_work() -> None:
    grid = TileGrid(16, 16)
    work = active_tiles(torch.full((2, 9, 2), -100.0), torch.ones(2), grid)
    assert work.pair_stroke.numel() == 0 and work.seg_start.numel() == 0
    assert stack_tiles(work.pair_stroke, work.pair_tile, 2, grid.count).depth == 0
