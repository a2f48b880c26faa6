"""Image loading: every PIL mode becomes 8-bit RGB; bad files raise a clear, skippable error."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.data.images import decode_image_bytes, load_image, load_image_rgba, to_rgb
from clipheads.core.errors import UserError


def _png16(path, arr: np.ndarray) -> None:
    """Write a 16-bit PNG by hand (PIL cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    colour_type = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_grayscale_becomes_rgb(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 77, np.uint8), "L").save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (7, 5)
    assert np.all(np.asarray(img) == 77)


def test_rgba_composited_on_white_and_alpha_kept(tmp_path):
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 0)      # fully transparent red -> white
    arr[0, 1] = (255, 0, 0, 255)    # opaque red
    arr[0, 2] = (0, 0, 0, 128)      # half-transparent black -> mid grey
    p = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(p)
    rgb = np.asarray(load_image(p)).astype(int)
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (255, 0, 0)
    assert all(abs(v - 127) <= 1 for v in rgb[0, 2])
    rgba = load_image_rgba(p)
    assert rgba.mode == "RGBA" and np.array_equal(np.asarray(rgba), arr)
    black = np.asarray(load_image(p, background=(0, 0, 0)))
    assert tuple(black[0, 0]) == (0, 0, 0)


def test_la_and_palette_with_transparency(tmp_path):
    la = tmp_path / "la.png"
    Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), "LA").save(la)
    assert np.asarray(load_image(la))[0].tolist() == [[255, 255, 255], [10, 10, 10]]

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1])
    pal.info["transparency"] = 0
    p = tmp_path / "p.png"
    pal.save(p, transparency=0)
    out = np.asarray(load_image(p))
    assert out[0].tolist() == [[255, 255, 255], [0, 255, 0]]
    assert load_image_rgba(p).getpixel((0, 0))[3] == 0


def test_palette_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([200, 10, 10, 10, 10, 200] + [0] * 762)
    pal.putdata([1, 0])
    p = tmp_path / "p.gif"
    pal.save(p)
    assert np.asarray(load_image(p))[0].tolist() == [[10, 10, 200], [200, 10, 10]]


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "g16.png"
    _png16(p, np.array([[0, 257, 32896, 65535]], dtype=np.uint16))
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))[0, :, 0].tolist()
    assert out == [0, 1, 128, 255]


def test_16bit_rgb(tmp_path):
    p = tmp_path / "c16.png"
    arr = np.array([[[65535, 0, 32896], [257, 65535, 0]]], dtype=np.uint16)
    _png16(p, arr)
    out = np.asarray(load_image(p)).astype(int)
    assert out.shape == (1, 2, 3)
    assert np.abs(out - np.rint(arr / 257.0)).max() <= 1


def test_32bit_int_modes():
    wide = Image.fromarray(np.array([[0, 32896, 65535]], np.int32), "I")
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255]
    narrow = Image.fromarray(np.array([[0, 100, 255]], np.int32), "I")
    assert np.asarray(to_rgb(narrow))[0, :, 0].tolist() == [0, 100, 255]


def test_binary_float_and_cmyk_modes(tmp_path):
    assert np.asarray(to_rgb(Image.new("1", (2, 2), 1))).max() == 255
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128, 255]
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(p)
    r, g, b = np.asarray(load_image(p))[0, 0].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation(tmp_path):
    img = Image.new("RGB", (6, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert load_image(p).size == (4, 6)
    assert load_image(p, exif=False).size == (6, 4)


def _jpeg(tmp_path, name="x.jpg") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_files_raise_corrupt_sample_naming_the_file(tmp_path, kind):
    data = _jpeg(tmp_path)
    payload = {"garbage": b"not an image at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[kind]
    p = tmp_path / f"{kind}.jpg"
    p.write_bytes(payload)
    with pytest.raises(CorruptSample) as info:
        load_image(p)
    msg = str(info.value)
    assert str(p) in msg and "\n" not in msg
    assert isinstance(info.value, UserError) and info.value.path == str(p)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "t.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(CorruptSample, match="t.png"):
        load_image(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(MissingSample, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(CorruptSample, match="directory"):
        load_image(tmp_path)


def test_decode_bytes_names_the_source():
    good = _jpeg(None)
    assert decode_image_bytes(good).size == (64, 64)
    with pytest.raises(CorruptSample, match="shard-7.tar:000000003"):
        decode_image_bytes(good[:300], name="shard-7.tar:000000003")
