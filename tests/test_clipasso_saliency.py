"""XDoG edges, Otsu, saliency-driven stroke starts and stroke initialisation."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from clipheads.core.errors import UserError
from clipheads.tasks.clipasso.edges import (
    edge_saliency,
    gaussian_blur,
    otsu_threshold,
    otsu_threshold_numpy,
    to_grayscale,
    xdog,
    xdog_edges,
)
from clipheads.tasks.clipasso.stroke_init import init_strokes, sample_stroke_starts


def square_image(inverted: bool = False) -> np.ndarray:
    img = np.ones((128, 128))
    img[24:104, 24:104] = 0.0
    return 1.0 - img if inverted else img


@pytest.mark.parametrize("inverted", [False, True])
def test_xdog_finds_square_edges(inverted: bool) -> None:
    e = xdog_edges(square_image(inverted))
    assert e.dtype == np.float32 and set(np.unique(e)) == {0.0, 1.0}
    # Flat regions are 1: far outside and deep inside the square.
    assert e[:12, :].min() == 1.0 and e[60:68, 60:68].min() == 1.0
    # Edges are 0, in a band hugging each side of the square (on its dark side).
    edge = e == 0
    for line in (e[64, :], e[:, 64]):
        zeros = np.flatnonzero(line == 0)
        assert zeros.size > 0 and 10 <= zeros.min() <= 26 and 102 <= zeros.max() <= 118
    rows, cols = np.nonzero(edge)
    assert rows.min() >= 10 and rows.max() <= 118 and cols.min() >= 10 and cols.max() <= 118


def test_xdog_of_flat_image_has_no_edges() -> None:
    assert np.all(xdog_edges(np.full((32, 32), 0.7)) == 1.0)
    soft = xdog(square_image())
    assert soft.min() >= 0.0 and soft.max() <= 1.0


def test_xdog_parameters_matter() -> None:
    img = square_image()
    assert not np.array_equal(xdog_edges(img), xdog_edges(img, sigma=2.0, k=3.0))


def test_gaussian_blur_preserves_mean_and_constants() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((40, 50))
    out = gaussian_blur(img, 3.0)
    assert out.shape == img.shape and out.std() < img.std()
    assert np.allclose(gaussian_blur(np.full((9, 9), 0.3), 8.0), 0.3)  # kernel wider than the image


def test_otsu_on_bimodal_image() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.2, 0.05, 6000), rng.normal(0.75, 0.05, 4000)]).clip(0, 1)
    th = otsu_threshold_numpy(values)
    assert 0.35 < th < 0.6
    assert abs((values > th).mean() - 0.4) < 0.01
    if importlib.util.find_spec("skimage") is not None:
        assert otsu_threshold(values) == pytest.approx(th, abs=0.01)
    assert otsu_threshold_numpy(np.full(10, 0.5)) == 0.5


def test_grayscale_and_saliency() -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert np.allclose(to_grayscale(rgb), 0.587)
    assert np.allclose(to_grayscale(torch.ones(3, 4, 5)), 1.0)
    attn = torch.rand(6, 6)
    edges = np.ones((6, 6), dtype=np.float32)
    edges[2, 3] = 0.0
    sal = edge_saliency(attn, edges)
    assert sal.nonzero().tolist() == [[2, 3]] and sal[2, 3] == attn[2, 3]
    with pytest.raises(UserError):
        edge_saliency(torch.rand(6, 6), np.ones((5, 5)))


def test_sampling_is_without_replacement_and_follows_map() -> None:
    m = torch.zeros(32, 32)
    m[4:12, 4:12] = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) + 0.1  # 64 positive pixels
    pts = sample_stroke_starts(m, 40, generator=torch.Generator().manual_seed(1))
    assert pts.shape == (40, 2) and torch.isfinite(pts).all()
    assert len({tuple(p) for p in pts.tolist()}) == 40
    cols, rows = (pts[:, 0] - 0.5).long(), (pts[:, 1] - 0.5).long()
    assert (m[rows, cols] > 0).all()  # only positive pixels, pixel centres as (x, y)
    # All 64 positive pixels are used when asked for 64.
    all_pts = sample_stroke_starts(m, 64, generator=torch.Generator().manual_seed(2))
    assert len({tuple(p) for p in all_pts.tolist()}) == 64


def test_low_temperature_prefers_salient_pixels() -> None:
    m = torch.full((20, 20), 0.1)
    m[0, :10] = 1.0
    hits = 0
    for seed in range(20):
        pts = sample_stroke_starts(m, 5, temperature=0.05, generator=torch.Generator().manual_seed(seed))
        hits += int((pts[:, 1] == 0.5).sum())
    assert hits >= 95


def test_same_generator_seed_same_samples() -> None:
    m = torch.rand(16, 16)
    a = sample_stroke_starts(m, 8, generator=torch.Generator().manual_seed(5))
    b = sample_stroke_starts(m, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "prob_map",
    [torch.zeros(10, 12), torch.full((10, 12), 0.4), -torch.rand(10, 12), torch.full((10, 12), float("nan"))],
    ids=["zeros", "flat", "negative", "nan"],
)
def test_degenerate_maps_fall_back_to_uniform(prob_map: torch.Tensor) -> None:
    pts = sample_stroke_starts(prob_map, 30, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (30, 2) and torch.isfinite(pts).all()
    assert len({tuple(p) for p in pts.tolist()}) == 30
    assert (pts[:, 0] > 0).all() and (pts[:, 0] < 12).all() and (pts[:, 1] > 0).all() and (pts[:, 1] < 10).all()


def test_too_few_positive_pixels_fall_back_to_uniform() -> None:
    m = torch.zeros(10, 10)
    m[3, 3] = 1.0
    pts = sample_stroke_starts(m, 5, generator=torch.Generator().manual_seed(0))
    assert len({tuple(p) for p in pts.tolist()}) == 5


def test_peaky_map_does_not_break_sampling() -> None:
    m = torch.zeros(8, 8)
    m[1, 1], m[2, 2], m[3, 3] = 1e4, 1.0, 2.0  # exp underflows for all but one pixel
    pts = sample_stroke_starts(m, 3, generator=torch.Generator().manual_seed(0))
    assert sorted(pts.tolist()) == [[1.5, 1.5], [2.5, 2.5], [3.5, 3.5]]


def test_sampling_rejects_bad_requests() -> None:
    with pytest.raises(UserError):
        sample_stroke_starts(torch.rand(4, 4), 17)
    with pytest.raises(UserError):
        sample_stroke_starts(torch.rand(4, 4), 2, temperature=0.0)
    with pytest.raises(UserError):
        sample_stroke_starts(torch.rand(4, 4, 3), 2)


def test_init_strokes_stay_within_radius() -> None:
    starts = sample_stroke_starts(torch.rand(224, 224), 16, generator=torch.Generator().manual_seed(0))
    pts = init_strokes(starts, 224, generator=torch.Generator().manual_seed(1))
    assert pts.shape == (16, 4, 2) and torch.equal(pts[:, 0], starts)
    step = (pts[:, 1:] - pts[:, :-1]).abs()
    assert step.max() <= 0.025 * 224 + 1e-5 and step.max() > 0.01 * 224
    rect = init_strokes(starts, (100, 400), radius=0.1, generator=torch.Generator().manual_seed(1))
    rect_step = (rect[:, 1:] - rect[:, :-1]).abs()
    assert rect_step[..., 0].max() <= 40 + 1e-5 and rect_step[..., 1].max() <= 10 + 1e-5
    assert rect_step[..., 0].max() > 10  # x uses the width
