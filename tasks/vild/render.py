"""Detections as files a person opens: COCO RLE for masks, and a PNG with boxes,
labels and translucent masks drawn over the input."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from clipheads.core.segmentation.render import palette, save_png


def mask_rle(mask: np.ndarray) -> dict:
    """A bool [H, W] mask as COCO compressed RLE ({"size": [h, w], "counts": str})."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def draw_detections(image: Image.Image, detections: Sequence, path: Path) -> Path:
    """Boxes, `label score` captions and masks (40% colour) of `detections` over `image`."""
    canvas = image.convert("RGB").copy()
    names = sorted({d.label for d in detections})
    colours = {n: tuple(int(c) for c in rgb) for n, rgb in zip(names, palette(len(names) + 1)[1:])}
    pixels = np.asarray(canvas, dtype=np.float32)
    for d in detections:
        if d.mask is not None:
            pixels[d.mask] = 0.6 * pixels[d.mask] + 0.4 * np.asarray(colours[d.label], dtype=np.float32)
    canvas = Image.fromarray(pixels.round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for d in detections:
        x0, y0, x1, y1 = d.box
        draw.rectangle([x0, y0, x1, y1], outline=colours[d.label], width=max(1, round(min(canvas.size) / 100)))
        caption = f"{d.label} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), caption)
        lift = bottom - top + 2
        ty = y0 - lift if y0 - lift >= 0 else y0
        draw.rectangle([x0, ty, x0 + right - left + 2, ty + lift], fill=colours[d.label])
        draw.text((x0 + 1, ty), caption, fill=(255, 255, 255))
    return save_png(canvas, path)
