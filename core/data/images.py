"""Image loading that always yields 8-bit RGB (or RGBA) PIL images, or a clear error.

Real folders hold grayscale scans, RGBA PNGs, palette GIFs, 16-bit PNGs, CMYK JPEGs and
files cut short by a failed download. Each is normalised the same way here so models
never see a mode they do not expect: alpha is composited on white (the usual
"transparent = paper" reading; `load_image_rgba` keeps it), 16-bit values are scaled
(not clipped) to 8 bits, and the pixels are decoded eagerly, so a truncated file fails
here, naming the file, instead of later inside a DataLoader worker.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipheads.core.data.errors import CorruptSample, MissingSample

WHITE = (255, 255, 255)
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
# Everything PIL raises for bad bytes; OSError covers truncation ("image file is truncated").
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 'L', scaling the value range."""
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float64)
        # 'I' (32-bit) is how old Pillow opened 16-bit PNGs; it also holds 8-bit data from
        # some TIFF writers, which must not be divided down to near-black.
        if not (img.mode == "I" and arr.size and arr.max() <= 255):
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    return img


def has_alpha(img: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha band or a tRNS/transparency key)."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def to_rgba(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit 'RGBA' (opaque where the source had no alpha)."""
    img = _to_8bit(img)
    if img.mode == "1":
        img = img.convert("L")
    return img.convert("RGBA")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL image as 8-bit 'RGB'; transparent pixels are composited onto `background`."""
    if has_alpha(img):
        rgba = to_rgba(img)
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    img = _to_8bit(img)
    if img.mode == "1":
        img = img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode(fp: io.BufferedIOBase | io.BytesIO, name: str | os.PathLike[str], exif: bool) -> Image.Image:
    try:
        img = Image.open(fp)
        img.load()  # force decoding now: truncated files fail here, not in a worker later
        if exif:
            img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError as exc:
        raise CorruptSample(name, "not a recognised image format") from exc
    except _DECODE_ERRORS as exc:
        raise CorruptSample(name, f"corrupt or truncated image ({exc})") from exc
    return img


def open_image(path: str | os.PathLike[str], exif: bool = True) -> Image.Image:
    """The decoded image in its own mode (no conversion); raises MissingSample/CorruptSample.

    `exif=True` applies the EXIF orientation tag, as photo viewers do. Datasets whose
    annotations are drawn on the stored pixel grid (COCO, PNG masks) pass `exif=False`.
    """
    p = Path(path)
    if not p.exists():
        raise MissingSample(p, "image file")
    if p.is_dir():
        raise CorruptSample(p, "is a directory, not an image file", fix="pass an image file")
    if not p.is_file():  # a FIFO or device would block or stream forever
        raise CorruptSample(p, "is not a regular file (a pipe or device)", fix="pass an image file")
    try:
        with open(p, "rb") as fh:
            return _decode(fh, p, exif)
    except PermissionError as exc:
        raise CorruptSample(p, "permission denied", fix="fix the file permissions") from exc


def load_image(path: str | os.PathLike[str], exif: bool = True,
               background: tuple[int, int, int] = WHITE) -> Image.Image:
    """An 8-bit RGB image (alpha composited onto `background`, white by default)."""
    return to_rgb(open_image(path, exif), background)


def load_image_rgba(path: str | os.PathLike[str], exif: bool = True) -> Image.Image:
    """An 8-bit RGBA image, for callers that need the alpha channel (e.g. sketch targets)."""
    return to_rgba(open_image(path, exif))


def decode_image_bytes(data: bytes, name: str = "<bytes>", exif: bool = True,
                       background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Like `load_image`, from encoded bytes (e.g. a tar member); `name` goes in errors."""
    return to_rgb(_decode(io.BytesIO(data), name, exif), background)


def check_image_inputs(paths: "list[str | os.PathLike[str]]") -> None:
    """Decode every input image (not just its header) and refuse two inputs whose outputs
    would share a name, before anything is written: a bad input N never leaves the outputs
    of inputs < N half-published."""
    from clipheads.core.errors import UserError
    stems: dict[str, Path] = {}
    for p in map(Path, paths):
        open_image(p).close()
        if p.stem in stems:
            raise UserError(f"{stems[p.stem]} and {p} share the name '{p.stem}', so their outputs "
                            "would overwrite each other; rename one")
        stems[p.stem] = p
