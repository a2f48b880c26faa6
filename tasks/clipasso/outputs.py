"""Writing a sketch: SVG (the deliverable), PNG render, GIF of the optimisation, and the
maps behind the initialisation (attention, XDoG edges, placement distribution + starts).

Every file is written to a temporary name and renamed, so an interrupted run never
leaves a half-written SVG behind.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipheads.core.atomic import atomic_write_bytes

from .raster import Rasteriser
from .stroke_init import placement_weights
from .strokes import Strokes
from .svg import strokes_to_svg


def atomic_write(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through the core's atomic writer."""
    return atomic_write_bytes(path, data)


def svg_text(strokes: Strokes, size: tuple[int, int]) -> str:
    """SVG of the first batch item on a white canvas of `size` (H, W)."""
    height, width = size
    return strokes_to_svg(strokes.points[0], strokes.widths[0], strokes.colours[0], strokes.opacity[0],
                          width=width, height=height)


def render_image(strokes: Strokes, size: tuple[int, int], rasteriser: Rasteriser, scale: int = 1) -> Image.Image:
    """The first batch item rendered on white at `scale` x the canvas, as an RGB PIL image."""
    height, width = size
    one = strokes.item(0)
    scaled = Strokes(one.points.detach() * scale, one.widths.detach() * scale, one.colours.detach(),
                     one.opacity.detach())
    with torch.no_grad():
        img = rasteriser.render(scaled, height * scale, width * scale, background=1.0)[0]
    arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def png_bytes(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def write_svg(path: Path, strokes: Strokes, size: tuple[int, int]) -> Path:
    return atomic_write(path, svg_text(strokes, size).encode("utf-8"))


def write_png(path: Path, strokes: Strokes, size: tuple[int, int], rasteriser: Rasteriser, scale: int = 1) -> Path:
    return atomic_write(path, png_bytes(render_image(strokes, size, rasteriser, scale)))


def write_gif(path: Path, frames: list[tuple[int, Strokes]], seed: int, size: tuple[int, int],
              rasteriser: Rasteriser, ms: int = 80, scale: int = 1) -> Path:
    """Animated GIF of one seed's strokes over the optimisation (the last frame is its best)."""
    images = [render_image(f.item(seed), size, rasteriser, scale).convert("P", palette=Image.Palette.ADAPTIVE)
              for _, f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)
    return atomic_write(path, buf.getvalue())


def saliency_image(maps, target_pixels: torch.Tensor) -> Image.Image:
    """Target | attention | placement map, side by side (grey levels)."""
    def grey(t: torch.Tensor) -> np.ndarray:
        t = t.detach().float().cpu()
        t = (t - t.min()) / (t.max() - t.min()) if float(t.max() - t.min()) > 0 else torch.zeros_like(t)
        return np.repeat((t.numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    target = (target_pixels[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    panels = [target, grey(maps.attention), grey(maps.placement)]
    return Image.fromarray(np.concatenate(panels, axis=1), "RGB")


def grey_image(values: torch.Tensor | np.ndarray, scale: str = "minmax") -> Image.Image:
    """[H, W] values as an 8-bit grey image: ``minmax`` to 0-255 (flat: 0), ``max``: v / max * 255."""
    v = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values.detach().cpu())
    v = torch.nan_to_num(v.double(), nan=0.0)
    lo = float(v.min()) if scale == "minmax" else 0.0
    span = float(v.max()) - lo
    v = (v - lo) / span if span > 0 else torch.zeros_like(v)
    return Image.fromarray((v.clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L")


def attention_image(maps) -> Image.Image:
    """The CLIP relevancy map on the canvas, min-max to 0-255."""
    return grey_image(maps.attention)


def edges_image(maps) -> Image.Image:
    """The binarised XDoG map on the canvas: 255 where the map is 1, 0 where it is 0."""
    return Image.fromarray(((maps.edges.detach().cpu().numpy() >= 0.5) * 255).astype(np.uint8), "L")


def placement_image(maps, size: tuple[int, int], starts: torch.Tensor, count: int, temperature: float) -> Image.Image:
    """The distribution the stroke starts are drawn from (brightness = probability / max;
    the uniform fallback is all white), the chosen starts [S, 2] (x, y px) marked red."""
    height, width = size
    prob = maps.placement if maps is not None else torch.ones(height, width)
    weights = placement_weights(prob, count, temperature).reshape(height, width)
    rgb = np.repeat(np.asarray(grey_image(weights, "max"))[..., None], 3, axis=-1).copy()
    for x, y in starts.detach().cpu().tolist():
        c, r = int(x), int(y)
        for dr, dc in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
            if 0 <= r + dr < height and 0 <= c + dc < width:
                rgb[r + dr, c + dc] = (230, 0, 0)
    return Image.fromarray(rgb, "RGB")


def maps_strip(panels: list[Image.Image], gap: int = 2) -> Image.Image:
    """Panels stacked top to bottom on white (the demo shows them small beside the sketch)."""
    panels = [p.convert("RGB") for p in panels]
    width = max(p.width for p in panels)
    strip = Image.new("RGB", (width, sum(p.height for p in panels) + gap * (len(panels) - 1)), "white")
    y = 0
    for p in panels:
        strip.paste(p, ((width - p.width) // 2, y))
        y += p.height + gap
    return strip


def contact_sheet(grid: list[list[tuple[torch.Tensor, str, bool]]], cell: int = 128) -> Image.Image:
    """Rows of (image [3, H, W] in [0, 1], caption, correct) cells; captions green / red."""
    rows, cols = len(grid), max(len(r) for r in grid)
    caption_h = 14
    sheet = Image.new("RGB", (cols * cell, rows * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(grid):
        for c, (img, caption, ok) in enumerate(row):
            arr = (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(arr, "RGB")
            scale = cell / max(tile.size)
            tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                               Image.Resampling.LANCZOS)
            x, y = c * cell, r * (cell + caption_h)
            sheet.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
            draw.text((x + 4, y + cell), caption, fill=(0, 140, 0) if ok else (200, 0, 0))
    return sheet
