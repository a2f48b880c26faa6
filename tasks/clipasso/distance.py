"""Distance from pixel centres to stroke polylines, with a memory-light gradient.

The distance to a polyline is a minimum over its segments. Autograd through that min
would keep a [pixels x segments] graph alive; but the gradient of a min is the gradient
of the winning segment alone, and for the point-to-segment distance the projection
parameter t can be held fixed (it is either an interior optimum or clamped). So the
forward pass searches all segments in bounded chunks without a graph and keeps only the
winning segment index per pixel; the backward pass recomputes that one segment.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

# Added under the square root so the gradient stays finite on the centre line.
_EPS = 1e-12


def _nearest_on_segments(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p - q, t) where q = a + t (b - a) is the point of segment [a, b] nearest to p."""
    ab = b - a
    ap = p - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(_EPS)).clamp(0.0, 1.0)
    return ap - t.unsqueeze(-1) * ab, t


class PolylineDistance(torch.autograd.Function):
    """d[A, P] = distance from pixel ``origins[A] + offsets[P]`` to polyline ``samples[stroke_ids[A]]``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        samples: torch.Tensor,
        stroke_ids: torch.Tensor,
        origins: torch.Tensor,
        offsets: torch.Tensor,
        chunk_elements: int,
    ) -> torch.Tensor:
        segs = samples.shape[1] - 1
        count, pix = stroke_ids.shape[0], offsets.shape[0]
        winner = torch.empty(count, pix, dtype=torch.int16 if segs < 2**15 else torch.int32, device=samples.device)
        dist = samples.new_empty(count, pix)
        step = max(1, chunk_elements // max(1, pix * segs))
        for lo in range(0, count, step):
            ids = stroke_ids[lo : lo + step]
            a = samples[ids, :-1].unsqueeze(1)  # [c, 1, K, 2]
            b = samples[ids, 1:].unsqueeze(1)
            p = (origins[lo : lo + step, None, :] + offsets).unsqueeze(2)  # [c, P, 1, 2]
            diff, _ = _nearest_on_segments(p, a, b)
            d2, k = (diff * diff).sum(-1).min(dim=-1)
            dist[lo : lo + step] = (d2 + _EPS).sqrt()
            winner[lo : lo + step] = k.to(winner.dtype)
        ctx.save_for_backward(samples, stroke_ids, origins, offsets, winner)
        ctx.chunk_elements = chunk_elements
        return dist

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        samples, stroke_ids, origins, offsets, winner = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        n, k1, _ = samples.shape
        flat = samples.reshape(n * k1, 2)
        out = torch.zeros_like(flat)
        pix = offsets.shape[0]
        step = max(1, ctx.chunk_elements // max(1, pix * 4))
        for lo in range(0, stroke_ids.shape[0], step):
            first = stroke_ids[lo : lo + step, None] * k1 + winner[lo : lo + step].long()  # [c, P]
            a, b = flat[first], flat[first + 1]
            p = origins[lo : lo + step, None, :] + offsets
            diff, t = _nearest_on_segments(p, a, b)
            dist = ((diff * diff).sum(-1) + _EPS).sqrt()
            # d = |p - q| with q = (1 - t) a + t b and t held fixed (envelope argument).
            g = -(grad[lo : lo + step] / dist).unsqueeze(-1) * diff
            t = t.unsqueeze(-1)
            out.index_add_(0, first.reshape(-1), ((1 - t) * g).reshape(-1, 2))
            out.index_add_(0, (first + 1).reshape(-1), (t * g).reshape(-1, 2))
        return out.reshape(n, k1, 2), None, None, None, None


def polyline_distance(
    samples: torch.Tensor,
    stroke_ids: torch.Tensor,
    origins: torch.Tensor,
    offsets: torch.Tensor,
    chunk_elements: int = 1 << 21,
) -> torch.Tensor:
    """[A, P] distances; see `PolylineDistance`. ``chunk_elements`` bounds the search's temporaries."""
    return PolylineDistance.apply(samples, stroke_ids, origins, offsets, chunk_elements)
