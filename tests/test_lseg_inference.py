"""Inference: multi-scale equals lang-seg's own evaluator (MultiEvalModule, run on a fixed
stand-in network; numbers in tests/fixtures/lseg/official_multieval.npz), multi-scale
reduces to single-scale, band-wise resizing equals a full-size interpolation, odd and tiny
images, and bounded memory on a huge image."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipheads.core.backbone import FrozenCLIP
from clipheads.tasks.lseg.config import InferConfig, ModelConfig
from clipheads.tasks.lseg.inference import (Segmenter, fit_long_side, resize_bilinear, upsample_argmax,
                                            windows)
from clipheads.tasks.lseg.model import build_net

from conftest import TINY_VIT


@pytest.fixture
def net_and_text(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    torch.manual_seed(0)
    cfg = ModelConfig(layers=[0, 1, 2], channels=[8, 16, 16], strides=[4, 8, 16], features=8)
    net = build_net(cfg, bb).eval()
    return net, torch.randn(4, bb.embed_dim)


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


FIXTURE = Path(__file__).parent / "fixtures" / "lseg" / "official_multieval.npz"


class StandIn(nn.Module):
    """A fixed, position-sensitive net (weights from sin/cos, no RNG); identical to the one the
    fixture script ran lang-seg's MultiEvalModule on (see docs/lseg.md)."""

    def __init__(self, k=3):
        super().__init__()
        self.w1 = torch.sin(torch.arange(6 * 3 * 9, dtype=torch.float64)).view(6, 3, 3, 3).float() * 0.5
        self.w2 = torch.cos(0.7 * torch.arange(k * 6 * 9, dtype=torch.float64)).view(k, 6, 3, 3).float() * 0.5
        self.encoder = nn.Module()
        self.encoder.patch_size, self.encoder.mean, self.encoder.std = 1, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def forward(self, x, text=None):
        y = torch.tanh(F.conv2d(x, self.w1, padding=1))
        y = F.conv2d(F.avg_pool2d(y, 2), self.w2, padding=1)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize("case", ["wide", "tall", "small_scales"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_multi_scale_equals_the_official_evaluator(case, batch_size):
    data = np.load(FIXTURE)
    spec = {c["name"]: c for c in json.loads(str(data["cases"]))}[case]
    image = Image.fromarray(data[case + "_image"], "RGB")
    ref = torch.from_numpy(data[case + "_scores"])
    cfg = InferConfig(size=spec["base"], multi_scale=True, scales=spec["scales"], base_size=spec["base"],
                      crop_size=spec["crop"], stride=int(spec["crop"] * 2.0 / 3.0), flip=True,
                      batch_size=batch_size, max_elements=64)          # tiny bands: many of them
    seg = Segmenter(StandIn(), torch.zeros(3, 1), cfg)
    ours = seg.scores(image)
    assert ours.shape == ref.shape == (3, image.height, image.width)
    assert torch.allclose(ours, ref, atol=2e-5), (ours - ref).abs().max()
    mask = seg.predict(image)   # 'small_scales' takes the per-scale-maps path, the others the full sum
    top2 = ref.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    assert np.array_equal(mask[clear], ref.argmax(0).numpy()[clear]) and clear.mean() > 0.99


def test_bilinear_rows_equal_interpolate():
    torch.manual_seed(0)
    for src, dst in [((3, 7, 9), (20, 5)), ((2, 1, 6), (4, 1)), ((2, 13, 11), (13, 11)), ((1, 30, 40), (7, 9))]:
        x = torch.randn(*src)
        ref = F.interpolate(x[None], size=dst, mode="bilinear", align_corners=True)[0]
        assert torch.allclose(resize_bilinear(x, dst, max_elements=8), ref, atol=1e-5)


def test_one_scale_and_an_image_sized_window_equal_single_scale(net_and_text):
    net, text = net_and_text
    image = _image(64, 64)      # no resize: single-scale uses PIL, multi-scale the official interpolation
    single = Segmenter(net, text, InferConfig(size=64))
    multi = Segmenter(net, text, InferConfig(size=64, multi_scale=True, scales=[1.0], base_size=64,
                                             crop_size=64, stride=43, flip=False))
    s1, s2 = single.scores(image), multi.scores(image)
    assert s1.shape == s2.shape == (4, 64, 64)
    assert torch.allclose(s1, s2, atol=1e-5)
    assert np.array_equal(single.predict(image), multi.predict(image))
    # and it is a real reduction: more scales or flips change the scores
    flipped = Segmenter(net, text, InferConfig(size=64, multi_scale=True, scales=[1.0], base_size=64,
                                               crop_size=64, stride=43, flip=True))
    assert not torch.allclose(flipped.scores(image), s1, atol=1e-3)


def test_sliding_windows_cover_the_image_and_average(net_and_text):
    net, text = net_and_text
    image = _image(50, 130)
    cfg = InferConfig(size=64, multi_scale=True, scales=[0.5, 1.25], base_size=80, crop_size=48,
                      stride=32, flip=True, batch_size=3)
    seg = Segmenter(net, text, cfg)
    scores = seg.scores(image)
    assert scores.shape == (4, 50, 130) and torch.isfinite(scores).all()      # the input's own size
    assert seg.scale_sizes(50, 130) == [fit_long_side(50, 130, 40), fit_long_side(50, 130, 100)]
    assert seg.predict(image).shape == (50, 130)
    wins = windows(100, 200, 48, 32)
    covered = np.zeros((100, 200), bool)
    for b in wins:
        covered[b.h0:b.h1, b.w0:b.w1] = True
    assert covered.all() and all(b.h1 - b.h0 <= 48 and b.w1 - b.w0 <= 48 for b in wins)


@pytest.mark.parametrize("src, dst", [((3, 5, 7), (11, 13)), ((2, 1, 1), (4, 3)), ((5, 4, 6), (1, 9)),
                                      ((300, 4, 4), (40, 33))])
def test_band_upsampling_equals_full_interpolation(src, dst):
    torch.manual_seed(1)
    scores = torch.randn(*src)
    full = F.interpolate(scores[None], size=dst, mode="bilinear", align_corners=True)[0].argmax(0).numpy()
    banded = upsample_argmax(scores, dst, max_elements=src[0] * dst[1] * 2)  # two rows per band
    assert banded.shape == dst and (banded == full).mean() > 0.995
    assert banded.dtype == (np.uint8 if src[0] <= 256 else np.int32)


@pytest.mark.parametrize("size", [(3, 5), (1, 300), (300, 2)])
def test_tiny_and_extreme_images(net_and_text, size):
    net, text = net_and_text
    image = _image(*size)
    for cfg in (InferConfig(size=64), InferConfig(size=64, multi_scale=True, scales=[0.75, 1.25],
                                                  base_size=64, crop_size=48, stride=32)):
        mask = Segmenter(net, text, cfg).predict(image)
        assert mask.shape == size and mask.max() < 4


@pytest.mark.parametrize("multi", [False, True])
def test_huge_image_keeps_memory_bounded(tmp_path, multi):
    """A 2400 x 3200 image with 64 labels: a full-size score tensor alone would need
    64 x 7.7M floats = 2 GB; banded upsampling keeps the whole run near the image size.
    Multi-scale keeps each scale's scores at their own size and sums them band by band."""
    script = textwrap.dedent("""
        import json, resource, sys, torch
        from PIL import Image, ImageDraw
        from clipheads.core.backbone import FrozenCLIP
        from clipheads.tasks.lseg.config import InferConfig, ModelConfig
        from clipheads.tasks.lseg.inference import Segmenter
        from clipheads.tasks.lseg.model import build_net
        torch.manual_seed(0)
        bb = FrozenCLIP.from_spec("tiny-world")
        net = build_net(ModelConfig(layers=[0, 1, 2, 3], channels=[8, 8, 16, 16], features=8), bb).eval()
        image = Image.new("RGB", (3200, 2400), (200, 200, 200))
        ImageDraw.Draw(image).ellipse([400, 400, 2000, 2000], fill=(220, 30, 30))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        multi = sys.argv[1] == "1"
        cfg = InferConfig(size=128, max_elements=1 << 22, multi_scale=multi, scales=[0.75, 1.5],
                          base_size=128, crop_size=96, stride=64)
        seg = Segmenter(net, torch.randn(64, bb.embed_dim), cfg)
        mask = seg.predict(image)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"shape": list(mask.shape), "max": int(mask.max()), "grew_mb": (after - before) / 1024}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(int(multi))], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2400, 3200] and result["max"] < 64
    assert result["grew_mb"] < 600, result
