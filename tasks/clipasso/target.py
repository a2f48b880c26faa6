"""The image to sketch, as a white-background tensor on the sketch canvas.

CLIPasso sketches the *object*: its background is replaced by white (the paper masks
with U2Net). Here the mask comes from the image's own alpha channel, a `--mask` file,
or rembg when the user has it. The canvas keeps the image's aspect ratio (long side =
`canvas`); CLIP sees it padded to a white square, so nothing is stretched (the official
code stretches non-square images to 224x224).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipheads.core.data.images import load_image_rgba, to_rgba
from clipheads.core.errors import UserError

# The short side never drops below this many px, so extreme aspect ratios still leave
# room for strokes (and for the 256-stroke case on a small canvas).
MIN_SHORT_SIDE = 16


@dataclass(frozen=True)
class Target:
    """pixels [1, 3, H, W] in [0, 1] on a white background; mask [H, W] (1 = object) or None."""

    pixels: torch.Tensor
    mask: torch.Tensor | None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[-2])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[-1])


def canvas_size(width: int, height: int, canvas: int) -> tuple[int, int]:
    """(H, W) of the canvas: long side `canvas`, the short side scaled (>= MIN_SHORT_SIDE)."""
    if width < 1 or height < 1:
        raise UserError(f"image has no pixels ({width}x{height})")
    scale = canvas / max(width, height)
    short_min = min(canvas, MIN_SHORT_SIDE)
    return max(short_min, round(height * scale)), max(short_min, round(width * scale))


def load_mask(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """A mask file as float [H, W] in [0, 1] at `size` (W, H); white / opaque = object."""
    img = load_image_rgba(path)
    rgba = np.asarray(img, dtype=np.float32) / 255.0
    has_alpha = rgba[..., 3].min() < 1.0
    # A transparent PNG mask means "alpha is the mask"; otherwise its luminance is.
    values = rgba[..., 3] if has_alpha else rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    mask = Image.fromarray((values * 255).round().astype(np.uint8), "L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    out = np.asarray(mask, dtype=np.float32) / 255.0
    if out.max() <= 0:
        raise UserError(f"mask {path} is empty (all black / transparent): nothing to sketch")
    return out


def remove_background(image: Image.Image) -> Image.Image:
    """rembg's U2Net cut-out (RGBA), or a UserError saying how to get rembg."""
    try:
        from rembg import remove  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UserError("output.rembg is set but rembg is not installed: pip install rembg "
                        "(it downloads U2Net weights on first use), or pass --mask FILE") from exc
    return to_rgba(remove(image.convert("RGB")))


def shrink(image: Image.Image, max_side: int = 2048) -> Image.Image:
    """RGBA, with huge images reduced by PIL first (long side `max_side`), so float copies stay small."""
    rgba = to_rgba(image)
    long_side = max(rgba.size)
    if long_side <= max_side:
        return rgba
    scale = max_side / long_side
    size = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
    # Premultiply so transparent pixels' colours do not bleed into the object's edge.
    return rgba.convert("RGBa").resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0).convert("RGBA")


def prepare_target(image: Image.Image, canvas: int, mask: np.ndarray | None = None,
                   use_alpha: bool = True) -> Target:
    """Composite the object onto white (alpha x mask) and resize it onto the canvas."""
    rgba = to_rgba(image)
    arr = np.asarray(rgba, dtype=np.float32) / 255.0
    alpha = arr[..., 3] if use_alpha else np.ones(arr.shape[:2], np.float32)
    if mask is not None:
        if mask.shape != alpha.shape:
            raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{alpha.shape[1]}x{alpha.shape[0]}")
        alpha = alpha * mask
    rgb = arr[..., :3] * alpha[..., None] + (1.0 - alpha[..., None])
    height, width = canvas_size(rgba.width, rgba.height, canvas)
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    cut = torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
    if (height, width) != tuple(pixels.shape[-2:]):
        big = height * width < pixels.shape[-2] * pixels.shape[-1]
        pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=big,
                               align_corners=False)
        cut = F.interpolate(cut, size=(height, width), mode="bilinear", antialias=big,
                            align_corners=False)
    has_mask = bool((alpha < 1.0).any())
    return Target(pixels.clamp(0.0, 1.0).contiguous(), cut[0, 0].clamp(0, 1) if has_mask else None)


def square_pad(images: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """Centre [B, C, H, W] on a square of side max(H, W) filled with `fill` (differentiable)."""
    h, w = images.shape[-2:]
    side = max(h, w)
    if h == w:
        return images
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(images, (left, side - w - left, top, side - h - top), value=fill)


def square_offset(height: int, width: int) -> tuple[int, int]:
    """(top, left) of the canvas inside its `square_pad` square."""
    side = max(height, width)
    return (side - height) // 2, (side - width) // 2


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize (differentiable); a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2]
    return F.interpolate(images, size=size, mode="bilinear", antialias=shrink, align_corners=False)
