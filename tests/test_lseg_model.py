"""LSeg net: shapes at any input size, fixed temperature, frozen backbone (gradients reach
only the head), unlock and param groups, spatial regularisation, the timm encoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.errors import UserError
from clipheads.tasks.lseg.config import ModelConfig, TimmConfig
from clipheads.tasks.lseg.model import build_net

from conftest import TINY_RN, TINY_VIT


def small_cfg(**kw) -> ModelConfig:
    base = dict(layers=[0, 1, 2], channels=[8, 16, 16], strides=[4, 8, 16], features=8)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def backbone(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    return FrozenCLIP.from_spec(TINY_VIT, weights=path)


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (72, 24), (8, 8), (33, 47)])
def test_logits_at_input_size_and_bounded_by_temperature(backbone, size):
    torch.manual_seed(0)
    net = build_net(small_cfg(), backbone).eval()
    text = torch.randn(5, backbone.embed_dim)
    with torch.no_grad():
        logits = net(torch.randn(2, 3, *size), text)
    assert logits.shape == (2, 5, *size)
    assert logits.abs().max() <= 1 / 0.07 + 1e-4
    emb = net.pixel_embeddings(torch.randn(1, 3, *size))
    assert torch.allclose(emb.norm(dim=1), torch.ones_like(emb[:, 0]), atol=1e-5)


def test_logits_are_scaled_cosines(backbone):
    net = build_net(small_cfg(temperature=0.5), backbone).eval()
    text = torch.randn(3, backbone.embed_dim) * 7  # not unit: the head normalises
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        emb = net.pixel_embeddings(x)
        expected = torch.einsum("bdhw,kd->bkhw", emb, F.normalize(text, dim=-1)) / 0.5
        got = net.head.logits(emb, text)
    assert torch.allclose(got, expected, atol=1e-5)


def test_frozen_backbone_gets_no_gradient_and_is_not_owned(backbone):
    net = build_net(small_cfg(), backbone)
    owned = {id(p) for p in net.parameters()}
    assert not any(id(p) in owned for p in backbone.parameters())
    assert not any(k.startswith("encoder") for k in net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 4, (2, 32, 32))
    F.cross_entropy(net(x, torch.randn(4, backbone.embed_dim)), target).backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert len(net.param_groups(10.0)) == 1 and net.param_groups(10.0)[0]["lr_mult"] == 10.0


def test_unlock_trains_the_backbone_at_base_lr(backbone):
    net = build_net(small_cfg(unlock=["visual.last:1"]), backbone)
    groups = net.param_groups(10.0)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    keys = list(net.state_dict())
    assert any(k.startswith("encoder.visual.") for k in keys) and not any("token_embedding" in k for k in keys)
    F.cross_entropy(net(torch.randn(1, 3, 32, 32), torch.randn(3, backbone.embed_dim)),
                    torch.randint(0, 3, (1, 32, 32))).backward()
    last = backbone.model.visual.transformer.resblocks[-1]
    assert all(p.grad is not None for p in last.parameters())
    assert all(p.grad is None for p in backbone.model.visual.transformer.resblocks[0].parameters())


@pytest.mark.parametrize("option, depth", [(1, 0), (1, 2), (2, 3)])
def test_spatial_regularisation_variants(backbone, option, depth):
    net = build_net(small_cfg(arch_option=option, block_depth=depth, activation="tanh"), backbone).eval()
    assert net.head.spatial is not None and net.head.spatial.bottleneck == (option == 1)
    logits = torch.randn(2, 4, 6, 6)
    spatial = net.head.spatial
    out = spatial(logits, activate=False)
    manual = spatial.conv(logits.reshape(8, 1, 6, 6)).reshape(2, 4, 6, 6)
    if option == 1:
        manual = manual + logits.max(dim=1, keepdim=True).values
    assert torch.allclose(out, manual, atol=1e-6)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), torch.randn(4, backbone.embed_dim)).shape == (1, 4, 32, 32)


@pytest.mark.parametrize("readout", ["ignore", "add", "project"])
def test_readouts(backbone, readout):
    net = build_net(small_cfg(readout=readout), backbone).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), torch.randn(2, backbone.embed_dim)).shape == (1, 2, 32, 32)


def test_project_readout_equals_linear_over_concatenation(backbone):
    net = build_net(small_cfg(), backbone)
    r = net.decoder.reassemble[0].readout
    tokens, cls = torch.randn(2, 64, 3, 5), torch.randn(2, 64)
    cat = torch.cat([tokens.permute(0, 2, 3, 1), cls[:, None, None, :].expand(2, 3, 5, 64)], dim=-1)
    expected = F.gelu(r.proj(cat)).permute(0, 3, 1, 2)
    assert torch.allclose(r(tokens, cls), expected, atol=1e-5)


@pytest.mark.parametrize("bad, pattern", [
    (dict(layers=[0, 1]), "one entry per"),
    (dict(layers=[0, 1, 7]), "out of range"),
    (dict(readout="mean"), "readout"),
    (dict(arch_option=3), "arch_option"),
    (dict(strides=[4, 8, 12]), "multiple of the patch"),
])
def test_bad_model_configs(backbone, bad, pattern):
    with pytest.raises(UserError, match=pattern):
        build_net(small_cfg(**bad), backbone)


def test_resnet_backbone_is_refused(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_RN)
    rn = FrozenCLIP.from_spec(TINY_RN, weights=path)
    with pytest.raises(UserError, match="needs a ViT"):
        build_net(small_cfg(), rn)


def test_timm_encoder_any_size_and_trainable(backbone):
    cfg = small_cfg(encoder="timm", layers=[0, 1, 3], timm=TimmConfig(
        name="vit_base_patch16_384", kwargs=dict(embed_dim=32, depth=4, num_heads=2, patch_size=8, img_size=32)))
    net = build_net(cfg, backbone, text_dim=16)
    assert net.encoder.patch_size == 8 and net.encoder.widths == [32, 32, 32]
    with torch.no_grad():
        tokens, cls = net.encoder(torch.randn(1, 3, 48, 40))
    assert [t.shape for t in tokens] == [(1, 32, 6, 5)] * 3 and cls[0].shape == (1, 32)
    groups = net.param_groups(10.0)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    frozen = build_net(ModelConfig(**{**cfg.__dict__, "timm": TimmConfig(
        name=cfg.timm.name, kwargs=cfg.timm.kwargs, trainable=False)}), backbone, text_dim=16)
    frozen.train()
    assert not frozen.encoder.training and len(frozen.param_groups(10.0)) == 1
    with pytest.raises(UserError, match="smaller than"):
        net.encoder(torch.randn(1, 3, 4, 40))
