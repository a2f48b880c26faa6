"""diffvg backend (UNTESTED here: pydiffvg is not installable in this environment).

Kept for users who already have diffvg built and want the reference CLIPasso renderer.
pydiffvg's ``Path.stroke_width`` is a half-width (its SVG writer doubles it), so widths
are halved on the way in; strokes are distance-based, i.e. round caps, like ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from clipheads.core.errors import UserError

from .raster import Background, background_tensor, check_canvas
from .strokes import Strokes

INSTALL_HINT = (
    "the 'diffvg' rasteriser needs pydiffvg, which is not on PyPI: build it from "
    "https://github.com/BachiLi/diffvg (git clone --recursive, then python setup.py install), "
    "or use the default rasteriser 'torch'"
)


def import_pydiffvg() -> ModuleType:
    """pydiffvg, or a UserError saying how to get it."""
    try:
        import pydiffvg  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UserError(INSTALL_HINT) from exc
    return pydiffvg


@dataclass(frozen=True)
class DiffvgRasteriser:
    """Renders each batch item with pydiffvg (one scene per item); untested in this repository."""

    samples_per_axis: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        import_pydiffvg()

    def render(self, strokes: Strokes, height: int, width: int, background: Background = None) -> torch.Tensor:
        check_canvas(height, width)
        pydiffvg = import_pydiffvg()
        device = pydiffvg.get_device()
        bg = background_tensor(background, strokes.batch, torch.float32, device)
        images = []
        for b in range(strokes.batch):
            shapes, groups = [], []
            for s in range(strokes.count):
                shapes.append(
                    pydiffvg.Path(
                        num_control_points=torch.tensor([2], dtype=torch.int32),
                        points=strokes.points[b, s].float().to(device),
                        is_closed=False,
                        stroke_width=strokes.widths[b, s].float().to(device) / 2,
                    )
                )
                rgba = torch.cat([strokes.colours[b, s], strokes.opacity[b, s, None]]).float().to(device)
                ids = torch.tensor([s], dtype=torch.int32)
                groups.append(pydiffvg.ShapeGroup(shape_ids=ids, fill_color=None, stroke_color=rgba))
            scene = pydiffvg.RenderFunction.serialize_scene(int(width), int(height), shapes, groups)
            img = pydiffvg.RenderFunction.apply(
                int(width), int(height), self.samples_per_axis, self.samples_per_axis, self.seed, None, *scene
            )  # [H, W, 4], colour not premultiplied
            a = img[..., 3:]
            images.append((img[..., :3] * a + bg[b] * (1 - a)).permute(2, 0, 1))
        return torch.stack(images).to(strokes.points.device)
