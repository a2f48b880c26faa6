"""A seed's sketch does not depend on how many seeds run beside it: each seed draws its
stroke initialisation and its augmentations from its own generator, seeded by the seed,
and the bank of target views is drawn from a fixed generator."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from clipheads.core.backbone import FrozenCLIP
from clipheads.tasks.clipasso.config import ClipassoConfig
from clipheads.tasks.clipasso.sketcher import Sketcher
from clipheads.tasks.clipasso.target import prepare_target

from conftest import TINY_VIT

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_for(seed: int, seeds: int, bank: int) -> ClipassoConfig:
    cfg = ClipassoConfig()
    cfg.strokes.canvas, cfg.strokes.count, cfg.strokes.segments = 32, 4, 8
    cfg.loss.augmentations, cfg.loss.bank = 2, bank
    cfg.optim.iterations, cfg.optim.eval_every, cfg.optim.patience = 4, 2, 100
    cfg.optim.seed, cfg.optim.seeds = seed, seeds
    return cfg


@pytest.mark.parametrize("bank", [6, 0])
def test_seed_alone_equals_seed_in_a_batch(openai_checkpoint, bank) -> None:
    path, _ = openai_checkpoint(TINY_VIT)
    vit = FrozenCLIP.from_spec(TINY_VIT, path)
    img = Image.new("RGB", (40, 40), "white")
    ImageDraw.Draw(img).polygon([(6, 34), (20, 5), (34, 34)], fill=(20, 120, 30))
    target = prepare_target(img, 32)
    alone = Sketcher(cfg_for(1000, 1, bank), vit).sketch(target)
    batch = Sketcher(cfg_for(999, 3, bank), vit).sketch(target)  # seeds 999, 1000, 1001
    assert torch.equal(alone.init.points[0], batch.init.points[1])
    a, b = alone.result.strokes.points[0], batch.result.strokes.points[1]
    assert not torch.equal(a, alone.init.points[0].to(a))  # the strokes did move
    assert torch.allclose(a, b, atol=1e-4, rtol=0), float((a - b).abs().max())
    assert abs(float(alone.result.losses[0]) - float(batch.result.losses[1])) < 1e-5
