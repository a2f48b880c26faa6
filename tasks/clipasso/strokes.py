"""The stroke container shared by rasterisers and the SVG writer.

One dataclass keeps the four per-stroke tensors together so every backend validates the
same shapes once, instead of each function re-checking loose arguments.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from clipheads.core.errors import UserError


@dataclass(frozen=True)
class Strokes:
    """A batch of open cubic Bézier strokes in pixel coordinates (x right, y down).

    points:  [B, S, 4, 2] control points P0..P3 of each stroke.
    widths:  [B, S] full stroke width in pixels (SVG ``stroke-width``).
    colours: [B, S, 3] RGB in [0, 1].
    opacity: [B, S] stroke opacity in [0, 1] (SVG ``stroke-opacity``).
    Strokes are painted in index order: stroke S-1 ends up on top.
    """

    points: torch.Tensor
    widths: torch.Tensor
    colours: torch.Tensor
    opacity: torch.Tensor

    def __post_init__(self) -> None:
        p = self.points
        if p.dim() != 4 or p.shape[-2:] != (4, 2):
            raise UserError(f"stroke points must have shape [B, S, 4, 2], got {list(p.shape)}")
        b, s = p.shape[:2]
        expected = {"widths": (b, s), "colours": (b, s, 3), "opacity": (b, s)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise UserError(f"stroke {name} must have shape {list(shape)}, got {list(got)}")

    @property
    def batch(self) -> int:
        return int(self.points.shape[0])

    @property
    def count(self) -> int:
        return int(self.points.shape[1])

    @classmethod
    def black(cls, points: torch.Tensor, width: float = 1.5) -> "Strokes":
        """Opaque black strokes of one width: the CLIPasso default look."""
        b, s = points.shape[:2]
        ones = points.new_ones(b, s)
        return cls(points, ones * width, points.new_zeros(b, s, 3), ones)

    def item(self, index: int) -> "Strokes":
        """One batch element, kept as a batch of one."""
        sl = slice(index, index + 1)
        return Strokes(self.points[sl], self.widths[sl], self.colours[sl], self.opacity[sl])
