"""Differentiable rasterisation of Bézier strokes: the backend interface and the default.

CLIPasso optimises stroke control points through a rasteriser. The reference code uses
diffvg, which is not on PyPI and is hard to build; `TorchRasteriser` is a pure-PyTorch
soft rasteriser (distance to a dense polyline -> smooth coverage -> "over" compositing)
that installs anywhere and renders a whole batch (e.g. several seeds) in one call.
`DiffvgRasteriser` is used only when asked for and pydiffvg is importable.

Memory: only (stroke, 8x8 tile) pairs that a stroke can reach are evaluated, the
nearest-segment search runs in bounded chunks without an autograd graph, and
compositing has a hand-written backward, so the largest tensors are the dense per-stroke
alpha [B, S, H*W] and its gradient. Measured on CPU (2 cores, float32, 224x224,
64 strokes, batch 8, 32 segments per curve, forward + backward): see the numbers in
`docs`-bound report; roughly 0.5 GB peak RSS for CLIPasso-sized strokes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, Union

import torch

from clipheads.core.errors import UserError, close_matches

from .bezier import sample_cubic
from .composite import composite_over
from .coverage import FILTERS, FilterName, filter_support, stroke_coverage
from .distance import polyline_distance
from .strokes import Strokes
from .tiles import TileGrid, active_tiles

Background = Union[torch.Tensor, Sequence[float], float, None]
RASTERISERS: tuple[str, ...] = ("torch", "diffvg")


class Rasteriser(Protocol):
    """Anything that turns a batch of strokes into images [B, 3, H, W] in [0, 1], differentiably."""

    def render(self, strokes: Strokes, height: int, width: int, background: Background = None) -> torch.Tensor:
        ...


def background_tensor(background: Background, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, 3] background colours from None (white), a grey level, an RGB triple, or [B, 3]."""
    if background is None:
        background = 1.0
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.dim() == 0:
        bg = bg.expand(3)
    if bg.shape == (3,):
        bg = bg.expand(batch, 3)
    if bg.shape != (batch, 3):
        raise UserError(f"background must be a grey level, an RGB triple or [B, 3], got shape {list(bg.shape)}")
    return bg


def check_canvas(height: int, width: int) -> None:
    """Reject canvas sizes that cannot be rendered."""
    if int(height) < 1 or int(width) < 1:
        raise UserError(f"canvas must be at least 1x1 pixels, got {height}x{width}")


@dataclass(frozen=True)
class TorchRasteriser:
    """Pure-PyTorch soft rasteriser (default backend).

    segments: polyline segments per cubic (accuracy vs. time); filter / filter_radius:
    pixel filter (see `coverage`); tile: culling tile size in pixels; chunk_elements:
    bound on the temporaries of the nearest-segment search.
    """

    segments: int = 32
    filter: FilterName = "logistic"
    filter_radius: float = 0.5
    tile: int = 8
    chunk_elements: int = 1 << 21

    def __post_init__(self) -> None:
        if self.filter not in FILTERS:
            raise UserError(f"unknown pixel filter {self.filter!r}{close_matches(self.filter, FILTERS)}; expected one of {', '.join(FILTERS)}")
        if self.segments < 1 or self.tile < 1 or self.filter_radius <= 0:
            raise UserError("segments and tile must be >= 1 and filter_radius > 0")

    def render(self, strokes: Strokes, height: int, width: int, background: Background = None) -> torch.Tensor:
        """Images [B, 3, H, W]; gradients reach points, widths, colours, opacity and background."""
        check_canvas(height, width)
        points = strokes.points
        if not torch.isfinite(points.detach()).all():
            raise UserError("stroke control points contain NaN or infinity")
        dtype, device = points.dtype, points.device
        bsz, count = strokes.batch, strokes.count
        grid = TileGrid(int(height), int(width), self.tile)
        bg = background_tensor(background, bsz, dtype, device)
        colours = strokes.colours.to(dtype)

        samples = sample_cubic(points, self.segments).reshape(bsz * count, self.segments + 1, 2)
        widths = strokes.widths.to(dtype).clamp_min(0.0).reshape(-1)
        reach = widths.detach() / 2 + filter_support(self.filter, self.filter_radius)
        stroke_ids, tile_ids = active_tiles(samples.detach(), reach, grid)

        offsets = grid.pixel_offsets(dtype, device)
        dist = polyline_distance(samples, stroke_ids, grid.origins(tile_ids, dtype), offsets, self.chunk_elements)
        cover = stroke_coverage(dist, widths[stroke_ids, None], self.filter, self.filter_radius)
        alpha_pairs = cover * strokes.opacity.to(dtype).reshape(-1)[stroke_ids, None]

        alpha = dist.new_zeros(bsz * count * grid.count, grid.pixels_per_tile)
        alpha.index_put_((stroke_ids * grid.count + tile_ids,), alpha_pairs)  # fresh buffer: no copy
        alpha = alpha.reshape(bsz, count, grid.count * grid.pixels_per_tile)
        image = composite_over(alpha, colours, bg)
        return grid.untile(image)


def get_rasteriser(name: Literal["torch", "diffvg"] = "torch", **options: object) -> Rasteriser:
    """The rasteriser called ``name``; ``options`` go to its constructor."""
    if name == "torch":
        return TorchRasteriser(**options)  # type: ignore[arg-type]
    if name == "diffvg":
        from .diffvg_backend import DiffvgRasteriser

        return DiffvgRasteriser(**options)  # type: ignore[arg-type]
    raise UserError(f"unknown rasteriser {name!r}{close_matches(str(name), RASTERISERS)}; expected one of {', '.join(RASTERISERS)}")
