"""SVG export (and a small parser for our own output) of cubic Bézier strokes.

The SVG is the CLIPasso deliverable, so it must render the same in any viewer as in our
rasteriser: one ``<path>`` per stroke with a single ``C`` segment, round caps (our
distance-based strokes have round ends), and pixel units via a ``viewBox`` equal to the
canvas. The parser reads back exactly this dialect (plus ``style=`` attributes and
relative commands) for round-trip tests and for re-rendering saved sketches.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence, Union

import torch

from clipheads.core.errors import UserError

Scalars = Union[torch.Tensor, Sequence[float], float]
_SVG_NS = "http://www.w3.org/2000/svg"
_TOKEN = re.compile(r"[MmCc]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _num(value: float, precision: int) -> str:
    text = f"{value:.{precision}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(min(max(float(c), 0.0), 1.0) * 255):02x}" for c in rgb)


def _per_stroke(value: Scalars | None, count: int, default: float, name: str) -> torch.Tensor:
    t = torch.as_tensor(default if value is None else value, dtype=torch.float64).detach().cpu()
    if t.dim() == 0:
        t = t.expand(count)
    if t.shape != (count,):
        raise UserError(f"{name} must be a number or have shape [{count}], got {list(t.shape)}")
    return t


def strokes_to_svg(
    points: torch.Tensor,
    widths: Scalars = 1.5,
    colours: torch.Tensor | Sequence[Sequence[float]] | None = None,
    opacity: Scalars | None = None,
    width: int = 224,
    height: int = 224,
    background: Sequence[float] | None = (1.0, 1.0, 1.0),
    precision: int = 3,
) -> str:
    """SVG text for strokes ``points[S, 4, 2]`` in pixels.

    colours [S, 3] default to black, opacity to 1; ``background=None`` leaves it transparent.
    """
    pts = torch.as_tensor(points).detach().to("cpu", torch.float64)
    if pts.dim() != 3 or pts.shape[1:] != (4, 2):
        raise UserError(f"points must have shape [S, 4, 2], got {list(pts.shape)}")
    if not torch.isfinite(pts).all():
        raise UserError("stroke control points contain NaN or infinity; nothing to export")
    count = pts.shape[0]
    w = _per_stroke(widths, count, 1.5, "widths")
    op = _per_stroke(opacity, count, 1.0, "opacity")
    col = torch.zeros(count, 3) if colours is None else torch.as_tensor(colours).detach().cpu()
    col = col.to(torch.float64)
    if col.shape != (count, 3):
        raise UserError(f"colours must have shape [{count}, 3], got {list(col.shape)}")

    w_px, h_px = int(width), int(height)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="{_SVG_NS}" version="1.1" width="{w_px}" height="{h_px}" viewBox="0 0 {w_px} {h_px}">',
    ]
    if background is not None:
        lines.append(f'<rect x="0" y="0" width="{w_px}" height="{h_px}" fill="{_hex(background)}"/>')
    for s in range(count):
        c = [_num(v, precision) for v in pts[s].reshape(-1).tolist()]
        d = f"M {c[0]} {c[1]} C {c[2]} {c[3]} {c[4]} {c[5]} {c[6]} {c[7]}"
        lines.append(
            f'<path d="{d}" fill="none" stroke="{_hex(col[s].tolist())}" stroke-width="{_num(float(w[s]), precision)}" '
            f'stroke-opacity="{_num(float(op[s]), precision)}" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ParsedSvg:
    """Strokes read back from an SVG: points [S, 4, 2], widths [S], colours [S, 3], opacity [S]."""

    points: torch.Tensor
    widths: torch.Tensor
    colours: torch.Tensor
    opacity: torch.Tensor
    width: float
    height: float
    background: tuple[float, float, float] | None


def _colour(text: str) -> tuple[float, float, float]:
    text = text.strip().lower()
    named = {"black": "#000000", "white": "#ffffff", "red": "#ff0000", "green": "#008000", "blue": "#0000ff"}
    text = named.get(text, text)
    if re.fullmatch(r"#[0-9a-f]{3}", text):
        text = "#" + "".join(ch * 2 for ch in text[1:])
    if re.fullmatch(r"#[0-9a-f]{6}", text):
        return tuple(int(text[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]
    m = re.fullmatch(r"rgb\(\s*([\d.]+)(%?)\s*,\s*([\d.]+)(%?)\s*,\s*([\d.]+)(%?)\s*\)", text)
    if m:
        vals = [float(m.group(i)) / (100 if m.group(i + 1) else 255) for i in (1, 3, 5)]
        return tuple(vals)  # type: ignore[return-value]
    raise UserError(f"unsupported SVG colour {text!r}; use #rrggbb or rgb(r, g, b)")


def _attrs(el: ET.Element) -> dict[str, str]:
    out = dict(el.attrib)
    for item in out.pop("style", "").split(";"):
        if ":" in item:
            key, value = item.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def _cubic(d: str) -> list[float]:
    tokens = _TOKEN.findall(d)
    if len(tokens) != 10 or tokens[0] not in "Mm" or tokens[3] not in "Cc":
        raise UserError(f"path d={d!r} is not a single cubic 'M x y C x1 y1 x2 y2 x y'")
    x0, y0 = float(tokens[1]), float(tokens[2])
    rest = [float(t) for t in tokens[4:]]
    if tokens[3] == "c":
        rest = [v + (x0 if i % 2 == 0 else y0) for i, v in enumerate(rest)]
    return [x0, y0, *rest]


def parse_svg_paths(svg: str) -> ParsedSvg:
    """Read back strokes written by `strokes_to_svg` (single-cubic paths, no transforms)."""
    try:
        root = ET.fromstring(svg)
    except ET.ParseError as exc:
        raise UserError(f"not a valid SVG document: {exc}") from exc
    box = root.get("viewBox")
    if box:
        _, _, width, height = (float(v) for v in box.replace(",", " ").split())
    else:
        width, height = float(root.get("width", "0")), float(root.get("height", "0"))
    background = None
    pts, widths, cols, ops = [], [], [], []
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        a = _attrs(el)
        if tag == "rect" and background is None and a.get("fill", "none") != "none":
            background = _colour(a["fill"])
        elif tag == "path":
            pts.append(_cubic(a.get("d", "")))
            widths.append(float(a.get("stroke-width", "1")))
            stroke = a.get("stroke", "none")
            cols.append(_colour(stroke) if stroke != "none" else (0.0, 0.0, 0.0))
            ops.append(float(a.get("stroke-opacity", "1")) * float(a.get("opacity", "1")) * (stroke != "none"))
    return ParsedSvg(
        points=torch.tensor(pts, dtype=torch.float64).reshape(-1, 4, 2),
        widths=torch.tensor(widths, dtype=torch.float64),
        colours=torch.tensor(cols, dtype=torch.float64).reshape(-1, 3),
        opacity=torch.tensor(ops, dtype=torch.float64),
        width=width,
        height=height,
        background=background,
    )
