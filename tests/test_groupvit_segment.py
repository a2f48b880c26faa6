"""The zero-shot segmentation protocol around the model: mmseg's resize and slide
windows, the top-5 restriction with many labels, background, tiny images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipheads.core.errors import UserError
from clipheads.tasks.groupvit.config import OfficialModel, SegmentConfig
from clipheads.tasks.groupvit.official import GroupViT
from clipheads.tasks.groupvit.segment import GroupSegmenter, group_affinity, resized_shape, to_pixels

from test_groupvit_official import FIX, tiny_cfg


@pytest.fixture(scope="module")
def model():
    tensors = load_file(str(FIX / "official_tiny.safetensors"))
    m = GroupViT(tiny_cfg()).eval()
    m.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("state.")})
    return m


def _image(h=40, w=56, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_resized_shape_is_mmcv_imrescale():
    assert resized_shape(375, 500, 448) == (448, 597)
    assert resized_shape(500, 375, 448) == (597, 448)
    assert resized_shape(100, 3000, 448) == (68, 2048)        # the long side is capped at 2048
    assert resized_shape(37, 53, 0) == (37, 53)


def test_slide_windows_average_the_whole_window_scores(model):
    text = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = ["a", "b", "c"]
    image = _image(32, 48)
    slide = GroupSegmenter(model, text, labels, SegmentConfig(short_side=0, crop=32, stride=16))
    pixels = to_pixels(image, (32, 48), model.mean, model.std, "cpu")
    expect = torch.zeros(3, 32, 48)
    count = torch.zeros(1, 32, 48)
    for x1 in (0, 16):                                          # mmseg: ceil((48-32)/16)+1 = 2 columns
        expect[:, :, x1:x1 + 32] += slide.window_scores(pixels[..., x1:x1 + 32])
        count[:, :, x1:x1 + 32] += 1
    assert torch.allclose(slide.scores(image), expect / count, atol=1e-6)
    whole = GroupSegmenter(model, text, labels, SegmentConfig(short_side=0, crop=64, stride=32))
    assert torch.allclose(whole.scores(image), whole.window_scores(pixels), atol=1e-6)


def test_five_hundred_labels_keep_the_images_top_five(model):
    g = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(500, 16, generator=g), dim=-1)
    labels = ["background"] + [f"class {i}" for i in range(499)]
    seg = GroupSegmenter(model, text[1:], labels, SegmentConfig(short_side=0, crop=0), background_index=0)
    image = _image(32, 32, 3)
    mask = seg.predict(image)
    pixels = to_pixels(image, (32, 32), model.mean, model.std, "cpu")
    with torch.no_grad():
        img_emb, grp_emb = model.embed_groups(model.group(pixels))
        probs = ((torch.nn.functional.normalize(img_emb, dim=-1) @ seg.text.T) * model.scales()[0]).softmax(-1)
        top5 = set((probs[0].topk(5).indices + 1).tolist())
        aff = group_affinity(img_emb[0], grp_emb[0], seg.text, model.scales()[0], 5)
    assert set(np.unique(mask).tolist()) - {0} <= top5
    assert (aff > 0).sum(dim=1).max() <= 5
    assert mask.dtype == np.int32                           # more than 256 labels: wider than uint8


def test_one_label_and_background_are_defined(model):
    text = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1)
    image = _image()
    only = GroupSegmenter(model, text, ["cat"], SegmentConfig(short_side=0, crop=0))
    assert (only.predict(image) == 0).all()
    with_bg = GroupSegmenter(model, text, ["background", "cat"], SegmentConfig(short_side=0, crop=0, bg_thresh=0.95),
                             background_index=0)
    mask = with_bg.predict(image)
    # one class: its probability is 1, above any threshold -> every pixel is 'cat', none NaN
    assert set(np.unique(mask).tolist()) == {1}


def test_image_smaller_than_a_patch(model):
    text = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    tiny = _image(5, 3)
    with pytest.raises(UserError, match="smaller than GroupViT's 8x8 patch"):
        GroupSegmenter(model, text, ["a", "b"], SegmentConfig(short_side=0, crop=0)).predict(tiny)
    mask = GroupSegmenter(model, text, ["a", "b"], SegmentConfig(short_side=32, crop=0)).predict(tiny)
    assert mask.shape == (5, 3)


def test_official_model_has_fixed_groups_and_checks_sizes():
    with pytest.raises(UserError, match="multiple of"):
        OfficialModel(image_size=30, patch_size=8).validate()
    with pytest.raises(UserError, match="one entry per stage"):
        OfficialModel(num_output_groups=[8]).validate()


@pytest.mark.parametrize("embed", ["pooled", "groups"])
def test_grouping_head_over_the_frozen_clip(embed):
    """Shapes, any group count up to the head's size, the backbone kept frozen, and (pooled)
    gradients reaching the assignment through the straight-through one-hot."""
    from clipheads.core.backbone import FrozenCLIP
    from clipheads.tasks.groupvit.config import HeadModel
    from clipheads.tasks.groupvit.head import GroupingHead
    torch.manual_seed(0)
    bb = FrozenCLIP.from_spec("tiny-world")
    head = GroupingHead(HeadModel(width=32, tap=1, depths=[1, 1, 0], num_heads=[2, 2, 2], num_group_tokens=[8, 4, 0],
                                  num_output_groups=[8, 4], groups_min=2, proj_hidden=32, embed=embed), bb).train()
    assert not any(k.startswith("_backbone") or "visual" in k for k in head.state_dict())
    pixels = torch.randn(2, 3, 96, 96)
    for keep in (None, 2):
        grouped = head.group(pixels, keep)
        image, groups = head.embed_groups(grouped)
        assert grouped.grid == (12, 12) and groups.shape == (2, keep or 4, bb.embed_dim)
        assert image.shape == (2, bb.embed_dim)
    (image.square().sum() + groups.square().sum()).backward()
    layer0 = head.stages.layers[0]
    assert layer0.group_token.grad.abs().sum() > 0
    assert layer0.downsample.assign.k_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())
    with pytest.raises(UserError, match="outputs 1..4 groups"):
        head.group(pixels, 5)
