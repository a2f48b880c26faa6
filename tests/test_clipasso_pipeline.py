"""CLIPasso beyond the rasteriser: augmentations, saliency, losses, the batched-seed loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.errors import UserError
from clipheads.tasks.clipasso.augment import apply_views, homography, sample_views
from clipheads.tasks.clipasso.config import ClipassoConfig, LossConfig, OptimConfig
from clipheads.tasks.clipasso.losses import LossTerms, SketchLoss, default_layers
from clipheads.tasks.clipasso.optimise import optimise
from clipheads.tasks.clipasso.placement import initial_strokes
from clipheads.tasks.clipasso.raster import TorchRasteriser
from clipheads.tasks.clipasso.saliency import attention_map, min_max, normalise, saliency_maps, vit_relevancy
from clipheads.tasks.clipasso.sketcher import Sketcher
from clipheads.tasks.clipasso.strokes import Strokes
from clipheads.tasks.clipasso.svg import parse_svg_paths
from clipheads.tasks.clipasso.outputs import svg_text
from clipheads.tasks.clipasso.target import canvas_size, prepare_target, square_pad

from conftest import TINY_RN, TINY_VIT


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def vit(openai_checkpoint) -> FrozenCLIP:
    path, _ = openai_checkpoint(TINY_VIT)
    return FrozenCLIP.from_spec(TINY_VIT, path)


@pytest.fixture
def rn(openai_checkpoint) -> FrozenCLIP:
    path, _ = openai_checkpoint(TINY_RN)
    return FrozenCLIP.from_spec(TINY_RN, path)


def shape_image(size=(60, 40), fill=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(img).ellipse((w * 0.2, h * 0.2, w * 0.8, h * 0.8), fill=fill)
    return img


def small_cfg(**optim) -> ClipassoConfig:
    cfg = ClipassoConfig()
    cfg.strokes.canvas, cfg.strokes.count, cfg.strokes.segments = 48, 6, 8
    cfg.loss.augmentations, cfg.loss.bank = 2, 6
    cfg.optim.iterations, cfg.optim.seeds, cfg.optim.eval_every = 6, 2, 2
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return cfg


# augmentations ------------------------------------------------------------------------
def test_homography_maps_the_four_points() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.rand(5, 4, 2, generator=g) * 2 - 1
    dst = src + 0.2 * torch.rand(5, 4, 2, generator=g)
    h = homography(src, dst)
    p = torch.cat([src, torch.ones(5, 4, 1)], -1) @ h.transpose(1, 2)
    assert torch.allclose(p[..., :2] / p[..., 2:], dst, atol=1e-4)


def test_identity_view_is_exact_and_views_are_inside() -> None:
    img = torch.rand(2, 3, 20, 20)
    eye = torch.eye(3).expand(2, 3, 3)
    assert torch.allclose(apply_views(img, eye), img, atol=1e-6)
    assert torch.allclose(sample_views(4, 0.0, 1.0), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    views = sample_views(64, 0.5, 1.0, torch.Generator().manual_seed(1))
    # Perspective moves the image's corners inwards: output corners sample outside the input
    # (fill), while the input corners land inside the output.
    corners = torch.tensor([[-1.0, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]])
    p = corners @ views.transpose(1, 2)
    assert (p[..., 2] > 0).all() and ((p[..., :2] / p[..., 2:]).abs().amax(-1) >= 1.0 - 1e-5).all()
    inv = corners @ torch.linalg.inv(views).transpose(1, 2)
    assert ((inv[..., :2] / inv[..., 2:]).abs() <= 1.0 + 1e-5).all()
    out = apply_views(torch.ones(64, 1, 32, 32), sample_views(64, 0.5, 0.8, torch.Generator().manual_seed(2)))
    assert (out[:, 0, 14:18, 14:18] > 0.99).all() and (out < 0.5).float().mean() > 0.01


def test_views_apply_identically_and_pass_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    views = sample_views(3, 0.5, 0.8, g)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    a = apply_views(x.expand(3, -1, -1, -1), views, fill=0.0)
    b = apply_views(x.detach().expand(3, -1, -1, -1).clone(), views, fill=0.0)
    assert torch.equal(a.detach(), b)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    white = apply_views(torch.ones(3, 3, 16, 16), views, fill=1.0)
    assert torch.allclose(white, torch.ones_like(white), atol=1e-6)


def test_bad_augmentation_settings() -> None:
    with pytest.raises(UserError):
        sample_views(2, perspective=1.5)
    with pytest.raises(UserError):
        sample_views(2, crop_scale=0.0)


# targets ------------------------------------------------------------------------------
def test_canvas_keeps_aspect_and_min_side() -> None:
    assert canvas_size(640, 480, 224) == (168, 224)
    assert canvas_size(16, 16, 224) == (224, 224)
    assert canvas_size(10000, 10, 224) == (16, 224)
    x = torch.zeros(1, 3, 10, 30)
    sq = square_pad(x)
    assert sq.shape[-2:] == (30, 30) and sq[0, 0, 0, 0] == 1.0 and sq[0, 0, 15, 15] == 0.0


def test_alpha_and_mask_become_white() -> None:
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))
    ImageDraw.Draw(rgba).rectangle((5, 5, 14, 14), fill=(0, 0, 255, 255))
    t = prepare_target(rgba, 20)
    assert t.mask is not None and t.pixels[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert t.pixels[0, 2, 10, 10] == 1.0 and t.pixels[0, 0, 10, 10] == 0.0
    mask = np.zeros((20, 20), np.float32)
    mask[:, :10] = 1
    t2 = prepare_target(shape_image((20, 20), (0, 0, 0)), 20, mask)
    assert t2.pixels[0, 0, 10, 15] == 1.0 and t2.pixels[0, 0, 10, 9] < 0.1
    with pytest.raises(UserError):
        prepare_target(shape_image((20, 20)), 20, np.ones((5, 5), np.float32))


# saliency -----------------------------------------------------------------------------
def test_relevancy_is_cls_row_mean_over_heads_and_blocks(vit) -> None:
    x = normalise(torch.rand(2, 3, 32, 32), vit.mean, vit.std)
    rel = vit_relevancy(vit, x)
    assert rel.shape == (2, 4, 4)
    inter = vit.forward_intermediates(x, list(range(vit.num_layers)), fmt="NLC", attention=True)
    manual = torch.stack([a.mean(1)[:, 0, 1:] for a in inter.attention]).mean(0).reshape(2, 4, 4)
    assert torch.allclose(rel, manual, atol=1e-6)
    roll = vit_relevancy(vit, x, "rollout")
    assert roll.shape == (2, 4, 4) and torch.isfinite(roll).all()
    with pytest.raises(UserError, match="relevancy"):
        vit_relevancy(vit, x, "gradcam")  # type: ignore[arg-type]


def test_attention_map_on_canvas(vit) -> None:
    t = prepare_target(shape_image((60, 40)), 48)
    attn = attention_map(vit, t)
    assert attn.shape == (t.height, t.width) == (32, 48)
    assert float(attn.min()) == 0.0 and float(attn.max()) == 1.0
    maps = saliency_maps(vit, t)
    assert maps.edges is not None and maps.placement.shape == attn.shape
    assert (maps.placement <= attn + 1e-6).all() and (maps.placement > 0).any()


def test_flat_maps_never_nan(vit) -> None:
    assert torch.equal(min_max(torch.full((3, 3), 0.2)), torch.ones(3, 3))
    assert torch.isfinite(min_max(torch.tensor([[float("nan"), 1.0]]))).all()
    white = prepare_target(Image.new("RGB", (40, 40), "white"), 32)
    maps = saliency_maps(vit, white)
    assert torch.isfinite(maps.placement).all() and float(maps.placement.max()) == 0.0  # no edges
    cfg = small_cfg()
    init = initial_strokes(maps.placement, (32, 32), cfg.strokes, cfg.init, [0, 1])
    assert init.points.shape == (2, 6, 4, 2) and torch.isfinite(init.points).all()


def test_resnet_saliency_is_a_clear_error(rn) -> None:
    with pytest.raises(UserError, match="ViT"):
        vit_relevancy(rn, torch.rand(1, 3, 64, 64))
    cfg = small_cfg()
    with pytest.raises(UserError, match="saliency_backbone"):
        Sketcher(cfg, rn)


def test_seed_initialisation_is_independent_of_batch() -> None:
    cfg = small_cfg()
    prob = torch.rand(30, 40)
    both = initial_strokes(prob, (30, 40), cfg.strokes, cfg.init, [3, 4])
    alone = initial_strokes(prob, (30, 40), cfg.strokes, cfg.init, [4])
    assert torch.equal(both.points[1], alone.points[0])
    assert not torch.equal(both.points[0], both.points[1])
    step = (both.points[:, :, 1:] - both.points[:, :, :-1]).abs()
    assert step[..., 0].max() <= 0.025 * 40 + 1e-5 and step[..., 1].max() <= 0.025 * 30 + 1e-5


# losses -------------------------------------------------------------------------------
@pytest.mark.parametrize("bank", [6, 0])
def test_sketch_equal_to_target_has_zero_loss_under_augmentation(vit, bank) -> None:
    """Identical augmentation of sketch and target: the target scored against itself is 0."""
    t = prepare_target(shape_image((40, 40)), 40)
    loss = SketchLoss(vit, t.pixels, LossConfig(augmentations=3, bank=bank), torch.Generator().manual_seed(0))
    terms = loss(t.pixels.expand(2, -1, -1, -1), augment=True, generator=torch.Generator().manual_seed(1))
    assert terms.total.shape == (2,)
    assert float(terms.total.abs().max()) < 1e-4 and float(terms.clean.abs().max()) < 1e-4
    other = loss(torch.ones(1, 3, 40, 40), augment=True)
    assert float(other.total) > 1e-3 and float(other.semantic) > 0


def test_target_features_are_computed_once(vit, monkeypatch) -> None:
    t = prepare_target(shape_image((40, 40)), 40)
    calls = []
    real = vit.forward_intermediates

    def counting(pixels, *a, **k):
        calls.append(pixels.shape[0])
        return real(pixels, *a, **k)

    monkeypatch.setattr(vit, "forward_intermediates", counting)
    loss = SketchLoss(vit, t.pixels, LossConfig(augmentations=4, bank=8))
    assert calls == [9]  # clean target + the bank, once
    for _ in range(3):
        loss(torch.rand(3, 3, 40, 40), augment=True)
    assert calls == [9, 15, 15, 15]  # only the 3 seeds x (clean + 4 augmented) sketches


def test_seeds_in_a_batch_get_their_own_gradients(vit) -> None:
    t = prepare_target(shape_image((40, 40)), 40)
    loss = SketchLoss(vit, t.pixels, LossConfig(augmentations=0))
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    loss(x, augment=False).total.sum().backward()
    x0 = x.detach()[:1].clone().requires_grad_(True)
    alone = loss(x0, augment=False)
    alone.total.sum().backward()
    assert torch.allclose(x.grad[:1], x0.grad, atol=1e-6)
    assert torch.allclose(loss(x.detach(), augment=False).clean[:1], alone.clean, atol=1e-6)


def test_default_geometric_layers(vit, rn) -> None:
    assert default_layers(rn) == [2, 3]  # layer2, layer3 as in the paper
    assert default_layers(vit) == [0, 1]  # a 3-block ViT: its middle blocks
    t = prepare_target(shape_image((64, 64)), 64)
    loss = SketchLoss(rn, t.pixels, LossConfig(augmentations=1, bank=2))
    assert [f.shape[1:] for f in loss.target_feats] == [(rn.layer_widths()[2], 8, 8), (rn.layer_widths()[3], 4, 4)]
    with pytest.raises(UserError, match="out of range"):
        SketchLoss(vit, t.pixels, LossConfig(geometric_layers=[7]))
    with pytest.raises(UserError, match="geometric_weights"):
        SketchLoss(vit, t.pixels, LossConfig(geometric_layers=[0, 1], geometric_weights=[1.0]))


# the loop -----------------------------------------------------------------------------
def quadratic_loss(target: torch.Tensor):
    """A stand-in loss: pixel L2 to a target image (clean pair only)."""
    def fn(images: torch.Tensor, augment: bool) -> LossTerms:
        per = (images - target).pow(2).flatten(1).mean(1)
        return LossTerms(per, per.detach(), per.detach(), per.detach() * 0)
    return fn


def test_loop_decreases_loss_keeps_best_and_batches_seeds() -> None:
    raster = TorchRasteriser(segments=8)
    goal = Strokes.black(torch.tensor([[[[4.0, 4], [10, 4], [20, 4], [28, 4]]]]), 3.0)
    target = raster.render(goal, 32, 32, 1.0)
    start = torch.tensor([[[[4.0, 9], [10, 9], [20, 9], [28, 9]]], [[[4.0, 20], [10, 20], [20, 20], [28, 20]]]])
    init = Strokes.black(start, 3.0)
    res = optimise(init, raster, (32, 32), quadratic_loss(target), OptimConfig(iterations=40, lr=0.5, eval_every=5),
                   gif_every=10)
    first = res.history[0]["loss"]
    assert all(b < a for a, b in zip(first, res.losses.tolist()))
    assert res.best_seed == 0 and res.iterations == 40 and not res.stopped_early
    assert [i for i, _ in res.frames] == [0, 10, 20, 30, 40]
    # the returned strokes are each seed's best, whose loss is what we report
    again = quadratic_loss(target)(raster.render(res.strokes, 32, 32, 1.0), False).clean
    assert torch.allclose(again, res.losses, atol=1e-5)


def test_zero_iterations_returns_the_init_and_early_stop_works() -> None:
    raster = TorchRasteriser(segments=8)
    init = Strokes.black(torch.rand(2, 3, 4, 2) * 32, 2.0)
    target = torch.ones(1, 3, 32, 32)
    res = optimise(init, raster, (32, 32), quadratic_loss(target), OptimConfig(iterations=0))
    assert torch.equal(res.strokes.points, init.points) and res.iterations == 0 and len(res.history) == 1
    flat = lambda images, augment: LossTerms(images.sum((1, 2, 3)) * 0, torch.zeros(2), torch.zeros(2), torch.zeros(2))
    res = optimise(init, raster, (32, 32), flat, OptimConfig(iterations=500, eval_every=2, patience=3))
    assert res.stopped_early and res.iterations == 6


def test_sketcher_end_to_end_vit(vit) -> None:
    cfg = small_cfg(iterations=4)
    sk = Sketcher(cfg, vit).sketch(prepare_target(shape_image((60, 40)), cfg.strokes.canvas))
    assert sk.result.strokes.points.shape == (2, 6, 4, 2) and sk.size == (32, 48)
    assert torch.isfinite(sk.result.losses).all()
    parsed = parse_svg_paths(svg_text(sk.best, sk.size))
    assert parsed.points.shape == (6, 4, 2) and (parsed.width, parsed.height) == (48, 32)
    assert torch.allclose(parsed.widths.float(), torch.full((6,), 3.0))


def test_sketcher_resnet_loss_with_vit_saliency(vit, rn) -> None:
    cfg = small_cfg(iterations=3, optimise_width=True, optimise_colour=True)
    cfg.strokes.canvas = 64
    sk = Sketcher(cfg, rn, saliency_backbone=vit).sketch(prepare_target(shape_image((64, 64)), 64))
    assert torch.isfinite(sk.result.losses).all() and math.isfinite(float(sk.result.losses.min()))
    assert (sk.result.strokes.widths >= cfg.optim.min_width).all()
    assert ((sk.result.strokes.colours >= 0) & (sk.result.strokes.colours <= 1)).all()
