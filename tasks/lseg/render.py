"""Writing masks and overlays: label-index PNGs (the CLI contract) and colour overlays,
each written under a temporary name and renamed, so no half-written file is left."""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

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


def save_png(image: Image.Image, path: Path) -> Path:
    """Write `path` atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
