"""SVG export/parse round trip and rasteriser backend selection."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from clipheads.core.errors import UserError
from clipheads.tasks.clipasso.raster import TorchRasteriser, get_rasteriser
from clipheads.tasks.clipasso.strokes import Strokes
from clipheads.tasks.clipasso.svg import parse_svg_paths, strokes_to_svg

NS = "{http://www.w3.org/2000/svg}"


def test_svg_structure() -> None:
    pts = torch.rand(5, 4, 2) * 100
    svg = strokes_to_svg(pts, 1.5, width=120, height=100)
    root = ET.fromstring(svg)
    assert root.get("viewBox") == "0 0 120 100"
    assert root.get("width") == "120" and root.get("height") == "100"
    rect = root.find(f"{NS}rect")
    assert rect is not None and rect.get("fill") == "#ffffff"
    paths = root.findall(f"{NS}path")
    assert len(paths) == 5
    for p in paths:
        assert p.get("d").startswith("M ") and " C " in p.get("d")
        assert p.get("fill") == "none" and p.get("stroke-linecap") == "round"
        assert p.get("stroke") == "#000000" and float(p.get("stroke-width")) == 1.5
        assert float(p.get("stroke-opacity")) == 1.0


def test_svg_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(7, 4, 2, generator=g) * 224 - 10  # some coordinates off-canvas / negative
    widths = 1 + 3 * torch.rand(7, generator=g)
    colours = torch.rand(7, 3, generator=g)
    opacity = torch.rand(7, generator=g)
    parsed = parse_svg_paths(strokes_to_svg(pts, widths, colours, opacity, 224, 200, background=(0.0, 0.5, 1.0)))
    assert parsed.width == 224 and parsed.height == 200
    assert torch.allclose(parsed.points.float(), pts, atol=1e-3)
    assert torch.allclose(parsed.widths.float(), widths, atol=1e-3)
    assert torch.allclose(parsed.opacity.float(), opacity, atol=1e-3)
    assert torch.allclose(parsed.colours.float(), colours, atol=1 / 255)
    assert parsed.background == pytest.approx((0.0, 128 / 255, 1.0))


def test_parse_relative_and_style_attributes() -> None:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10">'
        '<path d="m1,2c1,1 2,2 3,3" style="fill:none;stroke:rgb(255,0,0);stroke-width:2;stroke-opacity:0.5"/></svg>'
    )
    p = parse_svg_paths(svg)
    assert p.points.tolist() == [[[1, 2], [2, 3], [3, 4], [4, 5]]]
    assert p.colours.tolist() == [[1, 0, 0]] and p.widths.tolist() == [2] and p.opacity.tolist() == [0.5]
    assert p.background is None


def test_svg_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="NaN"):
        strokes_to_svg(torch.full((1, 4, 2), float("nan")))
    with pytest.raises(UserError, match="shape"):
        strokes_to_svg(torch.zeros(2, 3, 2))
    with pytest.raises(UserError, match="single cubic"):
        parse_svg_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 0 0 L 1 1"/></svg>')
    with pytest.raises(UserError, match="valid SVG"):
        parse_svg_paths("<svg")


def test_render_of_parsed_svg_matches_original() -> None:
    s = Strokes.black(torch.rand(1, 6, 4, 2, generator=torch.Generator().manual_seed(1)) * 64, 2.0)
    parsed = parse_svg_paths(strokes_to_svg(s.points[0], s.widths[0], width=64, height=64))
    again = Strokes(*(t[None].float() for t in (parsed.points, parsed.widths, parsed.colours, parsed.opacity)))
    r = TorchRasteriser()
    assert (r.render(s, 64, 64) - r.render(again, 64, 64)).abs().max() < 0.01


def test_get_rasteriser() -> None:
    assert isinstance(get_rasteriser("torch"), TorchRasteriser)
    assert get_rasteriser("torch", segments=8).segments == 8
    with pytest.raises(UserError, match="did you mean: torch"):
        get_rasteriser("torc")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="pixel filter"):
        TorchRasteriser(filter="gauss")  # type: ignore[arg-type]


def test_diffvg_missing_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pydiffvg", None)  # as on a machine without diffvg
    with pytest.raises(UserError, match="diffvg.*'torch'"):
        get_rasteriser("diffvg")


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"\[B, S, 4, 2\]"):
        Strokes.black(torch.zeros(3, 4, 2))
    with pytest.raises(UserError, match="widths"):
        Strokes(torch.zeros(1, 2, 4, 2), torch.zeros(1, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2))
    s = Strokes.black(torch.full((1, 1, 4, 2), float("nan")))
    with pytest.raises(UserError, match="NaN"):
        TorchRasteriser().render(s, 8, 8)
    with pytest.raises(UserError, match="canvas"):
        TorchRasteriser().render(Strokes.black(torch.zeros(1, 1, 4, 2)), 0, 8)
    with pytest.raises(UserError, match="background"):
        TorchRasteriser().render(Strokes.black(torch.zeros(1, 1, 4, 2)), 8, 8, background=(1.0, 1.0))
