"""Writing segmentation masks and overlays: label-index PNGs (the CLI contract of every
segmentation head), colour overlays and legends, each written under a temporary name and
renamed, so no half-written file is left."""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipheads.core.atomic import atomic_path


def palette(n: int) -> np.ndarray:
    """[n, 3] uint8 colours, well separated for neighbouring indices (golden-ratio hues)."""
    out = np.empty((max(n, 1), 3), dtype=np.uint8)
    for i in range(max(n, 1)):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.75, 0.95) if i % 2 == 0 else (0.9, 0.75)
        out[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)]
    return out[:n]


def mask_image(mask: np.ndarray) -> Image.Image:
    """Pixel value = label index: 8-bit 'L' for up to 256 labels, else 16-bit."""
    if mask.max(initial=0) <= 255:
        return Image.fromarray(mask.astype(np.uint8), "L")
    return Image.fromarray(mask.astype(np.uint16))


def boundaries(mask: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    return edge


def overlay(image: Image.Image, mask: np.ndarray, num_labels: int, alpha: float = 0.5) -> Image.Image:
    """The image blended with each pixel's label colour, region borders drawn in white."""
    colours = palette(num_labels)[mask]
    colours[boundaries(mask)] = 255
    return Image.blend(image.convert("RGB"), Image.fromarray(colours, "RGB"), alpha)


def legend(names: Sequence[str], colours: np.ndarray, height: int | None = None,
           row: int = 22) -> Image.Image:
    """Each name next to a swatch of its overlay colour, one row each, so an overlay reads
    without knowing the palette. `height` pins the picture's height (rows shrink to fit),
    so a gallery that shows pictures at one height draws the text at its own size."""
    if len(names) != len(colours):
        raise ValueError(f"{len(names)} names for {len(colours)} colours")
    pad = 4
    if height is not None:
        row = max(8, min(row, (height - 2 * pad) // max(len(names), 1)))
    font = ImageFont.load_default(size=max(8, round(row * 0.62)))
    swatch = row - 6
    text_w = max((int(font.getlength(n)) for n in names), default=0)
    size = (pad * 3 + swatch + text_w, height or 2 * pad + row * len(names))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, (name, colour) in enumerate(zip(names, colours)):
        top = pad + i * row + 3
        draw.rectangle([pad, top, pad + swatch - 1, top + swatch - 1], fill=tuple(int(c) for c in colour),
                       outline=(120, 120, 120))
        draw.text((2 * pad + swatch, top + swatch / 2), name, fill="black", font=font, anchor="lm")
    return image


def save_png(image: Image.Image, path: Path) -> Path:
    """Write `path` atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
