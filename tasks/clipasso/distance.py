"""Distance from pixel centres to stroke polylines, with a memory-light gradient.

The distance to a polyline is a minimum over its segments. A pixel within a stroke's
reach has its nearest segment among those whose grown bounding box overlaps the pixel's
tile, so work is done per (segment, tile) overlap and reduced per (stroke, tile) pair
with a scatter minimum; beyond the reach coverage is negligible anyway.

Autograd through that min would keep a graph per overlap; but the gradient of a min is
the gradient of the winning segment alone, and for the point-to-segment distance the
projection parameter t can be held fixed (it is an interior optimum or clamped). So the
forward pass runs without a graph and keeps only the winning segment per pixel; the
backward pass recomputes that one segment.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

# Added under the square root so the gradient stays finite on the centre line.
_EPS = 1e-12


def _nearest_on_segments(
    px: torch.Tensor, py: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dy, t): p - q and the parameter of q = a + t (b - a), the point of [a, b] nearest p.

    Coordinates are kept as separate x / y tensors: reductions over a trailing axis of
    size 2 are several times slower than plain elementwise arithmetic on CPU.
    """
    ax, ay = a[..., 0], a[..., 1]
    abx, aby = b[..., 0] - ax, b[..., 1] - ay
    inv = 1.0 / (abx * abx + aby * aby).clamp_min(_EPS)
    apx, apy = px - ax, py - ay
    t = ((apx * abx + apy * aby) * inv).clamp_(0.0, 1.0)
    return apx - t * abx, apy - t * aby, t


class PolylineDistance(torch.autograd.Function):
    """d[A, P]: distance from pixel ``pair_origin[a] + offsets[p]`` to pair a's stroke polyline.

    vertices: [N, K+1, 2] polyline vertices; seg_start / seg_pair / seg_origin: first
    vertex (flat index), pair, and tile origin [T, 2] of each (segment, tile) overlap.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        vertices: torch.Tensor,
        seg_start: torch.Tensor,
        seg_pair: torch.Tensor,
        seg_origin: torch.Tensor,
        pair_origin: torch.Tensor,
        offsets: torch.Tensor,
        chunk_elements: int,
    ) -> torch.Tensor:
        flat = vertices.detach().reshape(-1, 2)
        pairs = pair_origin.shape[0]
        pix = offsets.shape[0]
        step = max(1, chunk_elements // max(1, pix))
        d2min = flat.new_full((pairs, pix), float("inf"))
        chunks = [slice(lo, lo + step) for lo in range(0, seg_start.shape[0], step)]
        for sl in chunks:
            d2 = _segment_d2(flat, seg_start[sl], seg_origin[sl], offsets)
            d2min.scatter_reduce_(0, seg_pair[sl, None].expand_as(d2), d2, "amin")
        # Second pass: the segment that attains the minimum (recomputed bit-identically).
        winner = torch.zeros(pairs, pix, dtype=torch.long, device=flat.device)
        for sl in chunks:
            d2 = _segment_d2(flat, seg_start[sl], seg_origin[sl], offsets)
            rows = seg_pair[sl, None].expand_as(d2)
            won = d2 <= d2min[seg_pair[sl]]
            cols = torch.arange(pix, device=flat.device).expand_as(d2)
            winner[rows[won], cols[won]] = seg_start[sl, None].expand_as(d2)[won]
        ctx.save_for_backward(vertices, winner, pair_origin, offsets)
        ctx.chunk_elements = chunk_elements
        return (d2min + _EPS).sqrt()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        vertices, winner, pair_origin, offsets = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        flat = vertices.reshape(-1, 2)
        out = torch.zeros_like(flat)
        pix = offsets.shape[0]
        step = max(1, ctx.chunk_elements // max(1, pix * 4))
        for lo in range(0, winner.shape[0], step):
            first = winner[lo : lo + step]  # [c, P]
            a, b = flat[first], flat[first + 1]
            p = pair_origin[lo : lo + step, None, :] + offsets
            dx, dy, t = _nearest_on_segments(p[..., 0], p[..., 1], a, b)
            # d = |p - q| with q = (1 - t) a + t b and t held fixed (envelope argument).
            scale = -grad[lo : lo + step] / (dx * dx + dy * dy + _EPS).sqrt()
            g = torch.stack([dx * scale, dy * scale], dim=-1)
            t = t.unsqueeze(-1)
            out.index_add_(0, first.reshape(-1), ((1 - t) * g).reshape(-1, 2))
            out.index_add_(0, (first + 1).reshape(-1), (t * g).reshape(-1, 2))
        return (out.reshape(vertices.shape),) + (None,) * 6


def _segment_d2(flat: torch.Tensor, start: torch.Tensor, origin: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """[c, P] squared distance from each overlap's tile pixels to its segment."""
    p = origin[:, None, :] + offsets  # [c, P, 2]
    dx, dy, _ = _nearest_on_segments(p[..., 0], p[..., 1], flat[start, None], flat[start + 1, None])
    return dx * dx + dy * dy


def polyline_distance(
    vertices: torch.Tensor,
    seg_start: torch.Tensor,
    seg_pair: torch.Tensor,
    seg_origin: torch.Tensor,
    pair_origin: torch.Tensor,
    offsets: torch.Tensor,
    chunk_elements: int = 1 << 20,
) -> torch.Tensor:
    """[A, P] distances; see `PolylineDistance`. ``chunk_elements`` bounds the temporaries."""
    return PolylineDistance.apply(vertices, seg_start, seg_pair, seg_origin, pair_origin, offsets, chunk_elements)
