"""FrozenCLIP's views against references computed independently in the test.

Each reference is built from open_clip's own modules and helpers, PyTorch's own
`nn.MultiheadAttention`, or the published formula (MaskCLIP, ViLD-image), never from
`clipheads.core.backbone.vit`/`resnet`. Inputs of the blocks are captured with forward
pre-hooks on open_clip's own model running its own forward.
"""
from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from clipheads.core.backbone import FrozenCLIP
from clipheads.core.errors import UserError
from conftest import TINY_RN, TINY_VIT, random_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def _resized_open_clip(arch: str, source: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """open_clip's own model at another image size, weights resized by open_clip's own
    `resize_pos_embed` (what `open_clip.load_checkpoint` does)."""
    model = open_clip.create_model(arch, force_image_size=size)
    state = dict(source.state_dict())
    open_clip.model.resize_pos_embed(state, model)
    model.load_state_dict(state)
    return model.eval()


def _inputs_of(module: torch.nn.Module, run) -> list[torch.Tensor]:
    """The first positional input of every call of `module` while `run()` executes."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen


# encode_image at other sizes ------------------------------------------------------------
@pytest.mark.parametrize("size", [(48, 64), (24, 24), (16, 40)])  # larger, smaller, mixed
def test_vit_encode_image_at_other_sizes_is_open_clip_resized(openai_checkpoint, size):
    path, source = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    reference = _resized_open_clip(TINY_VIT, source, size)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, theirs = bb.encode_image(x), reference.encode_image(x)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


# attention maps -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_attention_maps_are_multihead_attention_weights(openai_checkpoint, size):
    path, source = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    reference = source if size == (32, 32) else _resized_open_clip(TINY_VIT, source, size)
    x = torch.randn(2, 3, *size)
    blocks = reference.visual.transformer.resblocks
    with torch.no_grad():
        out = bb.forward_intermediates(x, layers=[0, 1, 2], attention=True)
        for i, block in enumerate(blocks):
            (ln1_input,) = _inputs_of(block.attn, lambda: reference.encode_image(x))
            assert torch.allclose(ln1_input, block.ln_1(_inputs_of(block, lambda: reference.encode_image(x))[0]))
            _, weights = block.attn(ln1_input, ln1_input, ln1_input, need_weights=True,
                                    average_attn_weights=False)
            assert out.attention[i].shape == weights.shape == (2, 4, *[1 + size[0] * size[1] // 64] * 2)
            assert torch.allclose(out.attention[i], weights, atol=1e-6), i


# dense embeddings: MaskCLIP ------------------------------------------------------------
def _maskclip_vit(visual: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """MaskCLIP's ViT value path written out from the paper/code: the last block's input x,
    q/k/v = in-projection of ln_1(x), each through out_proj; keep v; v += x;
    v = v + mlp(ln_2(v)); ln_post; drop CLS; 1x1 projection (no bias) -> [B, D, h, w]."""
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    n, length, c3 = qkv.shape
    qkv = qkv.view(n, length, 3, c3 // 3).permute(2, 0, 1, 3).reshape(3 * n, length, c3 // 3)
    qkv = F.linear(qkv, attn.out_proj.weight, attn.out_proj.bias)
    _, _, v = qkv.tensor_split(3, dim=0)
    v = v + x
    v = v + block.mlp(block.ln_2(v))
    v = visual.ln_post(v)[:, 1:]
    v = v.reshape(n, *grid, -1).permute(0, 3, 1, 2)
    return F.conv2d(v, visual.proj.t()[:, :, None, None])


@pytest.mark.parametrize("size", [(32, 32), (48, 64)])
def test_vit_dense_embeddings_are_maskclip(openai_checkpoint, size):
    path, source = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    reference = source if size == (32, 32) else _resized_open_clip(TINY_VIT, source, size)
    x = torch.randn(2, 3, *size)
    grid = (size[0] // 8, size[1] // 8)
    with torch.no_grad():
        (last_input,) = _inputs_of(reference.visual.transformer.resblocks[-1],
                                   lambda: reference.encode_image(x))
        expected = _maskclip_vit(reference.visual, last_input, grid)
        raw = bb.dense_embeddings(x, normalize=False)
        unit = bb.dense_embeddings(x)
    assert raw.shape == expected.shape == (2, 32, *grid)
    assert torch.allclose(raw, expected, atol=1e-5)
    assert torch.allclose(unit, F.normalize(expected, dim=1), atol=1e-5)
    with pytest.raises(UserError, match="ResNet backbones only"):
        bb.dense_embeddings(x, pool_positions=True)


def _maskclip_resnet(pool: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None):
    """MaskCLIP's ResNet head (attn_pooling=False): v_proj and c_proj as 1x1 convolutions on
    the last stage's map, no positional embedding (`positions` only for the variant)."""
    if positions is not None:
        x = x + positions
    v = F.conv2d(x, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias)
    return F.conv2d(v, pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_resnet_dense_embeddings_are_maskclip(openai_checkpoint, size):
    path, source = openai_checkpoint(TINY_RN)
    bb = FrozenCLIP.from_spec(TINY_RN, weights=path)
    x = torch.randn(2, 3, *size)
    visual = source.visual
    with torch.no_grad():
        feats = visual.stem(x)  # open_clip's own stages, run by hand at any size
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            feats = layer(feats)
        expected = _maskclip_resnet(visual.attnpool, feats)
        raw = bb.dense_embeddings(x, normalize=False)
        unit = bb.dense_embeddings(x)
    assert raw.shape == expected.shape == (2, 32, size[0] // 32, size[1] // 32)
    assert torch.allclose(raw, expected, atol=1e-5)
    assert torch.allclose(unit, F.normalize(expected, dim=1), atol=1e-5)
    if size == (64, 64):  # the named variant: the pool's own positions at the native grid
        pos = visual.attnpool.positional_embedding[1:].t().reshape(1, -1, 2, 2)
        with torch.no_grad():
            variant = bb.dense_embeddings(x, normalize=False, pool_positions=True)
            assert torch.allclose(variant, _maskclip_resnet(visual.attnpool, feats, pos), atol=1e-5)
        assert not torch.allclose(variant, raw, atol=1e-3)


# region embeddings: ViLD-image --------------------------------------------------------
@pytest.mark.parametrize("arch", [TINY_VIT, TINY_RN])
def test_region_embeddings_are_crop_resize_encode(openai_checkpoint, arch):
    """Boxes whose crops at scales 1.0 and 1.5 are whole multiples of the model input, so
    RoIAlign's adaptive sampling lands on pixel centres and equals slicing + area
    resizing (an average over each k x k cell). Tolerance 1e-5."""
    path, source = openai_checkpoint(arch)
    bb = FrozenCLIP.from_spec(arch, weights=path)
    s = bb.image_size[0] // 32  # 1 for the tiny ViT (32 px), 2 for the tiny ResNet (64 px)
    image = torch.randn(2, 3, 256 * s, 256 * s)
    boxes = [torch.tensor([[32.0, 32.0, 96.0, 96.0], [32.0, 64.0, 160.0, 128.0]]) * s,
             torch.tensor([[96.0, 96.0, 160.0, 160.0]]) * s]
    with torch.no_grad():
        ours = bb.region_embeddings(image, boxes, scales=(1.0, 1.5))
        expected = []
        for img, img_boxes in zip(image, boxes):
            for x0, y0, x1, y1 in img_boxes.tolist():
                total = 0
                for scale in (1.0, 1.5):
                    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
                    crop = img[None, :, int(cy - hh):int(cy + hh), int(cx - hw):int(cx + hw)]
                    crop = F.interpolate(crop, size=bb.image_size, mode="area")
                    total = total + F.normalize(source.encode_image(crop), dim=-1)
                expected.append(F.normalize(total, dim=-1))
        expected = torch.cat(expected)
    assert ours.shape == expected.shape == (3, 32)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


# unlock groups ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [TINY_VIT, TINY_RN])
@pytest.mark.parametrize("group", ["text", "all", "logit_scale"])
def test_unlock_groups_make_exactly_their_parameters_trainable(openai_checkpoint, arch, group):
    path, _ = openai_checkpoint(arch)
    bb = FrozenCLIP.from_spec(arch, weights=path)
    named = dict(bb.model.named_parameters())
    if group == "all":
        expected = set(named)
    elif group == "logit_scale":
        expected = {"logit_scale"}
    else:  # what encode_text reads: everything it backpropagates into, and nothing else
        bb.model.requires_grad_(True)
        bb.model.encode_text(bb.tokenize(["a red circle", "two blue stars"])).square().sum().backward()
        expected = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
        assert expected == {n for n in named if not n.startswith("visual.") and n != "logit_scale"}
        bb.model.zero_grad(set_to_none=True)
        bb.model.requires_grad_(False)
    got = bb.unlock([group])
    assert {n for n, p in named.items() if p.requires_grad} == expected
    assert {id(p) for p in got} == {id(named[n]) for n in expected}
    assert len(got) == len(expected)


# TorchScript archives -----------------------------------------------------------------
@pytest.mark.parametrize("arch", [TINY_VIT, TINY_RN])
def test_torchscript_archive_loads_only_when_allowed(tmp_path, arch):
    """A real traced archive laid out as OpenAI shipped them: forward, encode_image and
    encode_text of a CLIP in OpenAI's key layout traced as open_clip's `trace_model` does
    (which itself cannot trace ViTs in open_clip 3.3: tuple image_size), with OpenAI's
    `input_resolution` constant in the state dict and the causal mask a plain attribute
    (baked into the graph as in OpenAI's archives, not an `attn_mask` buffer)."""
    model = random_clip(arch)
    plain = tmp_path / f"{arch}-state.pt"
    torch.save(model.state_dict(), plain)
    mask = model.attn_mask
    del model._buffers["attn_mask"]
    model.attn_mask = mask
    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    model.register_buffer("input_resolution", torch.tensor(size))
    archive = tmp_path / f"{arch}.pt"
    images, text = torch.ones(1, 3, size, size), torch.zeros(1, 16, dtype=torch.int)
    torch.jit.trace_module(model, {"forward": (images, text), "encode_text": (text,),
                                   "encode_image": (images,)},
                           check_trace=False).save(str(archive))  # MHA fast path differs per call
    with pytest.raises(UserError, match="TorchScript archive") as err:
        FrozenCLIP.from_spec(arch, weights=archive)
    assert "\n" not in str(err.value) and "--allow-torchscript" in str(err.value)
    scripted = FrozenCLIP.from_spec(arch, weights=archive, allow_torchscript=True)
    reference = FrozenCLIP.from_spec(arch, weights=plain)
    x = torch.randn(2, 3, *reference.image_size)
    tokens = reference.tokenize(["a red circle"])
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(archive)).encode_image(x),  # a working archive
                              reference.encode_image(x), atol=1e-5)
        assert torch.allclose(scripted.encode_image(x), reference.encode_image(x), atol=1e-6)
        assert torch.allclose(scripted.encode_text(tokens), reference.encode_text(tokens), atol=1e-6)
    assert scripted.fingerprint == reference.fingerprint
