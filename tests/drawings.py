"""Shapes drawn with plain PIL primitives (not the tiny-world renderer), so tests check that
tiny-world models recognise the concepts, not the generator's pixels."""
from __future__ import annotations

import math

from PIL import Image, ImageDraw

PIL_RGB = {"red": (230, 25, 25), "green": (20, 160, 40), "blue": (30, 60, 230),
           "yellow": (245, 215, 0), "purple": (130, 30, 180), "orange": (255, 140, 0)}


def _star(cx, cy, r):
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.42
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rgb) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        s = r * 0.8
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.7), (cx + r * 0.95, cy + r * 0.7)], fill=rgb)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=rgb)
    elif shape == "heart":
        q = r * 0.5
        draw.ellipse([cx - r, cy - r * 0.75, cx, cy - r * 0.75 + 2 * q], fill=rgb)
        draw.ellipse([cx, cy - r * 0.75, cx + r, cy - r * 0.75 + 2 * q], fill=rgb)
        draw.polygon([(cx - r * 0.97, cy - r * 0.15), (cx + r * 0.97, cy - r * 0.15), (cx, cy + r)], fill=rgb)
    elif shape == "cross":
        t = r * 0.32
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=rgb)
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=rgb)
    else:
        raise ValueError(shape)


def drawing(colour: str, shape: str, size: int = 96, background=(245, 245, 245),
            centre=None, radius=None) -> Image.Image:
    """One coloured shape on a plain background."""
    img = Image.new("RGB", (size, size), background)
    cx, cy = centre or (size / 2, size / 2)
    draw_shape(ImageDraw.Draw(img), shape, cx, cy, radius or size * 0.3, PIL_RGB[colour])
    return img


def two_shapes(first: tuple[str, str], second: tuple[str, str], size: int = 128,
               background=(245, 245, 245), radius: float = 0.2) -> tuple[Image.Image, "list"]:
    """Two coloured shapes side by side on a plain background (each `radius` x `size` in
    radius), and each one's own mask (a boolean array from drawing it alone), for
    per-shape IoU checks."""
    import numpy as np
    img = Image.new("RGB", (size, size), background)
    masks = []
    for (colour, shape), cx in zip((first, second), (size * 0.28, size * 0.72)):
        draw_shape(ImageDraw.Draw(img), shape, cx, size * 0.5, size * radius, PIL_RGB[colour])
        alone = Image.new("L", (size, size), 0)
        draw_shape(ImageDraw.Draw(alone), shape, cx, size * 0.5, size * radius, 255)
        masks.append(np.asarray(alone) > 127)
    return img, masks


def moving_shape_frames(colour: str, shape: str, direction: str, n_frames: int = 16, size: int = 96,
                        radius: float = 0.14, background=(245, 245, 245)):
    """uint8 frames [n, size, size, 3] of one PIL-drawn shape crossing half the image
    (`direction` left/right/up/down), for video tests."""
    import numpy as np
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    frames = []
    for t in range(n_frames):
        shift = (t / max(n_frames - 1, 1) - 0.5) * 0.5 * size
        img = Image.new("RGB", (size, size), background)
        draw_shape(ImageDraw.Draw(img), shape, size / 2 + step[0] * shift, size / 2 + step[1] * shift,
                   size * radius, PIL_RGB[colour])
        frames.append(np.asarray(img))
    return np.stack(frames)
