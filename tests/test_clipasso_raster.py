"""The pure-PyTorch stroke rasteriser against cairo, finite differences and a dense reference."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from clipheads.tasks.clipasso.bezier import sample_cubic
from clipheads.tasks.clipasso.coverage import stroke_coverage
from clipheads.tasks.clipasso.raster import TorchRasteriser
from clipheads.tasks.clipasso.strokes import Strokes
from clipheads.tasks.clipasso.svg import strokes_to_svg


def random_strokes(batch: int, count: int, size: int, seed: int, dtype=torch.float32, spread=0.6) -> Strokes:
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(batch, count, 1, 2, generator=g, dtype=dtype) * size
    pts = start + (torch.rand(batch, count, 4, 2, generator=g, dtype=dtype) - 0.5) * size * spread
    widths = 1 + 3 * torch.rand(batch, count, generator=g, dtype=dtype)
    colours = torch.rand(batch, count, 3, generator=g, dtype=dtype)
    opacity = 0.3 + 0.7 * torch.rand(batch, count, generator=g, dtype=dtype)
    return Strokes(pts, widths, colours, opacity)


def dense_reference(strokes: Strokes, height: int, width: int, segments: int = 32) -> torch.Tensor:
    """Every pixel against every segment with plain autograd: slow, obviously correct."""
    pts = strokes.points
    smp = sample_cubic(pts, segments)
    r = torch.arange(max(height, width), dtype=pts.dtype) + 0.5
    ys, xs = torch.meshgrid(r[:height], r[:width], indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(1, 1, -1, 1, 2)
    a, b = smp[:, :, None, :-1], smp[:, :, None, 1:]
    ab, ap = b - a, p - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    d = (((ap - t[..., None] * ab) ** 2).sum(-1).amin(-1) + 1e-12).sqrt()
    alpha = stroke_coverage(d, strokes.widths[..., None]) * strokes.opacity[..., None]
    out = torch.ones(pts.shape[0], 3, height * width, dtype=pts.dtype)
    for s in range(pts.shape[1]):
        out = out * (1 - alpha[:, s, None]) + strokes.colours[:, s, :, None] * alpha[:, s, None]
    return out.reshape(-1, 3, height, width)


def cairo_render(svg: str) -> np.ndarray:
    import cairosvg  # the dev extra installs it: a missing renderer must fail, not skip
    from PIL import Image

    png = cairosvg.svg2png(bytestring=svg.encode())
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_cairo_black_strokes(size: int, seed: int) -> None:
    s = random_strokes(1, 16, size, seed)
    s = Strokes(s.points, s.widths, torch.zeros_like(s.colours), torch.ones_like(s.opacity))
    ours = TorchRasteriser().render(s, size, size)[0].permute(1, 2, 0).numpy()
    ref = cairo_render(strokes_to_svg(s.points[0], s.widths[0], width=size, height=size))
    assert np.abs(ours - ref).mean() <= 0.05
    ink_ours, ink_ref = ours.mean(-1) < 0.5, ref.mean(-1) < 0.5
    assert ink_ref.sum() > 0.02 * size * size  # the comparison is not vacuous
    iou = (ink_ours & ink_ref).sum() / (ink_ours | ink_ref).sum()
    assert iou >= 0.9


def test_matches_cairo_colours_and_opacity() -> None:
    s = random_strokes(1, 24, 96, seed=3)
    ours = TorchRasteriser().render(s, 96, 96, background=(0.2, 0.4, 0.9))[0].permute(1, 2, 0).numpy()
    svg = strokes_to_svg(s.points[0], s.widths[0], s.colours[0], s.opacity[0], 96, 96, background=(0.2, 0.4, 0.9))
    ref = cairo_render(svg)
    assert np.abs(ours - ref).mean() <= 0.02
    assert np.abs(ours - ref).mean(-1).max() < 0.6


def test_culled_render_equals_dense_reference() -> None:
    s = random_strokes(2, 6, 40, seed=4, dtype=torch.float64)
    leaves = [s.points, s.widths, s.colours, s.opacity]
    for t in leaves:
        t.requires_grad_(True)
    weights = torch.randn(2, 3, 40, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = TorchRasteriser().render(s, 40, 37)  # 37 is not a multiple of the tile size
    ref = dense_reference(s, 40, 37)
    assert torch.allclose(ours, ref, atol=1e-5)
    g_ours = torch.autograd.grad((ours * weights).sum(), leaves)
    g_ref = torch.autograd.grad((ref * weights).sum(), leaves)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gradcheck_points_widths_colours_opacity() -> None:
    s = random_strokes(1, 2, 12, seed=5, dtype=torch.float64, spread=0.8)
    raster = TorchRasteriser(tile=16)  # one tile: no culling boundary inside the canvas
    # Six random projections of the image keep the analytic Jacobian cheap (6 backward passes).
    proj = torch.randn(6, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def render(points, widths, colours, opacity):
        img = raster.render(Strokes(points, widths, colours, opacity), 12, 12)
        return (img * proj).sum((1, 2, 3))

    inputs = tuple(t.clone().requires_grad_(True) for t in (s.points, s.widths, s.colours, s.opacity))
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_finite_differences_with_default_culling() -> None:
    s = random_strokes(1, 4, 32, seed=6, dtype=torch.float64)
    weights = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    raster = TorchRasteriser()

    def loss(points, widths):
        return (raster.render(Strokes(points, widths, s.colours, s.opacity), 32, 32) * weights).sum()

    pts, wid = s.points.clone().requires_grad_(True), s.widths.clone().requires_grad_(True)
    g_pts, g_wid = torch.autograd.grad(loss(pts, wid), [pts, wid])
    h = 1e-5
    for idx in [(0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 2, 0), (0, 3, 3, 1)]:
        plus, minus = s.points.clone(), s.points.clone()
        plus[idx] += h
        minus[idx] -= h
        fd = (loss(plus, s.widths) - loss(minus, s.widths)) / (2 * h)
        assert abs(fd - g_pts[idx]) <= 1e-4 + 1e-3 * abs(fd), (idx, fd, g_pts[idx])
    for j in range(4):
        plus, minus = s.widths.clone(), s.widths.clone()
        plus[0, j] += h
        minus[0, j] -= h
        fd = (loss(s.points, plus) - loss(s.points, minus)) / (2 * h)
        assert abs(fd - g_wid[0, j]) <= 1e-4 + 1e-3 * abs(fd)


@pytest.mark.parametrize("filter_name, reaches", [("logistic", True), ("tent", False), ("box", False)])
def test_gradient_reaches_pixel_outside_stroke(filter_name: str, reaches: bool) -> None:
    # Horizontal stroke along y = 8 of width 2: its edge is y = 9; pixel row 10 (centre
    # 10.5) is 1.5 px outside. Only a filter with unbounded support gives it a gradient.
    pts = torch.tensor([[[[2.0, 8.0], [6.0, 8.0], [10.0, 8.0], [14.0, 8.0]]]], dtype=torch.float64, requires_grad=True)
    width = torch.full((1, 1), 2.0, dtype=torch.float64, requires_grad=True)
    s = Strokes(pts, width, torch.zeros(1, 1, 3, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    img = TorchRasteriser(filter=filter_name).render(s, 16, 16)
    assert img[0, 0, 10, 8] > 1 - 1e-3  # the pixel is (almost) background
    g_pts, g_w = torch.autograd.grad(img[0, 0, 10, 8], [pts, width])
    assert (g_pts[..., 1].abs().sum() > 0) == reaches
    assert (g_w.abs().sum() > 0) == reaches
    if reaches:
        assert g_pts[..., 1].sum() < 0  # moving the stroke down darkens the pixel


def test_gradients_reach_every_parameter() -> None:
    s = random_strokes(2, 5, 48, seed=7)
    leaves = [s.points, s.widths, s.colours, s.opacity]
    for t in leaves:
        t.requires_grad_(True)
    img = TorchRasteriser().render(s, 48, 48)
    weights = torch.randn(img.shape, generator=torch.Generator().manual_seed(2))
    for g in torch.autograd.grad((img * weights).sum(), leaves):
        assert torch.isfinite(g).all()
        assert (g.abs().flatten(2 if g.dim() > 2 else 1).sum(-1) > 0).all()  # every stroke, every item


def test_batch_equals_items() -> None:
    s = random_strokes(3, 7, 50, seed=8)
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.2, 0.1]])
    batch = TorchRasteriser().render(s, 50, 60, background=bg)
    for i in range(3):
        single = TorchRasteriser().render(s.item(i), 50, 60, background=bg[i])
        assert torch.allclose(batch[i : i + 1], single, atol=1e-6)


def test_empty_and_offcanvas_strokes_give_background() -> None:
    empty = Strokes(torch.zeros(2, 0, 4, 2), torch.zeros(2, 0), torch.zeros(2, 0, 3), torch.zeros(2, 0))
    out = TorchRasteriser().render(empty, 10, 12, background=0.25)
    assert out.shape == (2, 3, 10, 12) and torch.all(out == 0.25)
    far = Strokes.black(torch.full((1, 3, 4, 2), -50.0))
    assert torch.all(TorchRasteriser().render(far, 10, 12) == 1.0)


def test_clipasso_size_batch_runs() -> None:
    """224x224, 64 strokes, batch 8, forward + backward (memory/time sanity, no timing asserts)."""
    g = torch.Generator().manual_seed(9)
    start = torch.rand(8, 64, 1, 2, generator=g) * 224
    steps = (torch.rand(8, 64, 3, 2, generator=g) * 2 - 1) * 0.025 * 224
    pts = torch.cat([start, start + steps.cumsum(2)], 2).requires_grad_(True)
    img = TorchRasteriser().render(Strokes.black(pts, 1.5), 224, 224)
    assert img.shape == (8, 3, 224, 224)
    assert img.min() < 0.2 and img.max() == 1.0
    img.mean().backward()
    assert torch.isfinite(pts.grad).all() and (pts.grad.abs().sum((2, 3)) > 0).all()
