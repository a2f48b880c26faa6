"""FrozenCLIP against open_clip's own model on identical weights, and its dense views."""
from __future__ import annotations

import pytest
import torch

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.errors import UserError

from conftest import TINY_RN, TINY_VIT


@pytest.mark.parametrize("arch", [TINY_VIT, TINY_RN])
def test_encoders_match_open_clip_from_openai_state_dict(arch, openai_checkpoint):
    path, reference = openai_checkpoint(arch)
    bb = FrozenCLIP.from_spec(arch, weights=path)
    size = bb.image_size
    x = torch.randn(3, 3, *size)
    tokens = bb.tokenize(["a red circle", "a blue star"])
    with torch.no_grad():
        assert torch.allclose(bb.encode_image(x), reference.encode_image(x), atol=1e-5)
        assert torch.allclose(bb.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


@pytest.mark.parametrize("arch", ["ViT-B-32-quickgelu", "RN50-quickgelu"])
def test_real_size_architectures_match(arch, openai_checkpoint):
    path, reference = openai_checkpoint(arch, suffix=".safetensors")
    bb = FrozenCLIP.from_spec(arch, weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(bb.encode_image(x), reference.encode_image(x), atol=1e-5)


def test_frozen_but_pixels_get_gradients(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    bb.train()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    bb.encode_image(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = bb.unlock(["visual.last:1"])
    assert params and all(p.requires_grad for p in params)
    bb.train()
    assert bb.training


def test_last_block_tokens_are_what_encode_image_uses(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = bb.forward_intermediates(x, layers=[0, -1], fmt="NLC", pooled=True)
        emb = bb.encode_image(x)
    v = bb.model.visual
    assert out.grid == (4, 4) and out.tokens[1].shape == (2, 16, 64)
    assert torch.allclose(out.image_embedding, emb, atol=1e-5)
    # recompute the embedding from the returned last-block CLS token
    assert torch.allclose(v.ln_post(out.cls[1]) @ v.proj, emb, atol=1e-5)
    nchw = bb.forward_intermediates(x, layers=[-1], fmt="NCHW").tokens[0]
    assert torch.allclose(nchw.flatten(2).transpose(1, 2), out.tokens[1], atol=1e-6)


def test_attention_maps_are_row_stochastic_and_differentiable(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = bb.forward_intermediates(x, layers=[0, 1, 2], attention=True)
    plain = bb.forward_intermediates(x, layers=[0, 1, 2])
    for a in out.attention:
        assert a.shape == (1, 4, 17, 17)
        assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5)
    for t_attn, t_plain in zip(out.tokens, plain.tokens):
        assert torch.allclose(t_attn, t_plain, atol=1e-5)
    out.attention[-1][0, :, 0, 1:].mean().backward()
    assert x.grad.abs().sum() > 0


def test_resnet_intermediates_and_dense(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_RN)
    bb = FrozenCLIP.from_spec(TINY_RN, weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = bb.forward_intermediates(x, layers=[2, 3, 4], pooled=True)
        assert [t.shape[1] for t in out.tokens] == bb.layer_widths()[2:]
        assert torch.allclose(out.image_embedding, bb.encode_image(x), atol=1e-5)
        assert bb.forward_intermediates(x, layers=[4]).image_embedding is None
        early = bb.forward_intermediates(x, layers=[1], pooled=True)  # runs on to the pool
        assert torch.allclose(early.image_embedding, bb.encode_image(x), atol=1e-5)
        dense = bb.dense_embeddings(x)
    assert dense.shape == (2, 32, 2, 2)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 2, 2), atol=1e-5)
    with pytest.raises(UserError, match="ViT"):
        bb.forward_intermediates(x, attention=True)


def test_dense_and_region_embeddings_vit(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    x = torch.randn(1, 3, 48, 64)  # not the training size: position embeddings are resized
    with torch.no_grad():
        dense = bb.dense_embeddings(x)
        assert dense.shape == (1, 32, 6, 8)
        whole = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
        img = torch.randn(1, 3, 32, 32)
        region = bb.region_embeddings(img, [whole], scales=(1.0,))
        # a box covering the whole image at scale 1 is the image itself
        assert torch.allclose(region, bb.encode_image(img, normalize=True), atol=1e-4)
        two = bb.region_embeddings(img, [torch.tensor([[4.0, 4.0, 20.0, 28.0], [0, 0, 8, 8]])])
    assert two.shape == (2, 32)
    assert torch.allclose(two.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_tiny_input_is_a_clear_error(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    with pytest.raises(UserError, match="smaller than"):
        bb.encode_image(torch.randn(1, 3, 4, 4))


def _tiny_vit(openai_checkpoint) -> FrozenCLIP:
    path, _ = openai_checkpoint(TINY_VIT)
    return FrozenCLIP.from_spec(TINY_VIT, weights=path)


def test_visual_last_unlocks_blocks_only_and_pool_is_its_own_group(openai_checkpoint):
    bb = _tiny_vit(openai_checkpoint)
    v = bb.model.visual
    last = bb.unlock(["visual.last:1"])
    assert {id(p) for p in last} == {id(p) for p in v.transformer.resblocks[-1].parameters()}
    assert not v.proj.requires_grad and not any(p.requires_grad for p in v.ln_post.parameters())
    pool = bb.unlock(["visual.pool"])
    assert {id(p) for p in pool} == {id(p) for p in [*v.ln_post.parameters(), v.proj]}
    for bad in ("visual.last:0", "visual.last:9", "visual.last:x"):
        with pytest.raises(UserError, match="from 1 to 3"):
            bb.unlock([bad])
    rn_path, _ = openai_checkpoint(TINY_RN)
    rn = FrozenCLIP.from_spec(TINY_RN, weights=rn_path)
    assert {id(p) for p in rn.unlock(["visual.pool"])} == \
        {id(p) for p in rn.model.visual.attnpool.parameters()}


@pytest.mark.parametrize("pooled", [False, True])
def test_pooling_gets_gradients_only_when_asked(openai_checkpoint, pooled):
    bb = _tiny_vit(openai_checkpoint)
    params = bb.unlock(["visual.last:1", "visual.pool"])
    out = bb.forward_intermediates(torch.randn(2, 3, 32, 32), [-1], fmt="NLC", pooled=pooled)
    loss = out.tokens[0].square().mean()
    assert (out.image_embedding is not None) == pooled
    if pooled:
        loss = loss + out.image_embedding.square().mean()
    loss.backward()
    v = bb.model.visual
    pool = [*v.ln_post.parameters(), v.proj]
    assert all(p.grad is not None for p in v.transformer.resblocks[-1].parameters())
    assert all((p.grad is not None) == pooled for p in pool)
    assert len(params) == len(list(v.transformer.resblocks[-1].parameters())) + len(pool)


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group: enough for DDP to check that every parameter got a grad."""
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class _TokenHead(torch.nn.Module):
    """Like LSeg's ClipEncoder: the unlocked image tower is a submodule of the head."""

    def __init__(self, bb: FrozenCLIP):
        super().__init__()
        self.__dict__["bb"] = bb
        self.visual = bb.model.visual
        self.out = torch.nn.Linear(bb.width, 1)

    def forward(self, x):
        return self.out(self.bb.forward_intermediates(x, [-1], fmt="NLC").tokens[0]).mean()


def test_ddp_trains_a_token_head_with_unlocked_last_block(openai_checkpoint, process_group):
    bb = _tiny_vit(openai_checkpoint)
    bb.unlock(["visual.last:1"])
    ddp = torch.nn.parallel.DistributedDataParallel(_TokenHead(bb))  # find_unused_parameters=False
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(3):  # an unused unlocked parameter fails from the second step on
        ddp(torch.randn(2, 3, 32, 32)).backward()
        opt.step()
        opt.zero_grad()
