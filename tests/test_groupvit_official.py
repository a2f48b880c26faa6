"""The official-architecture GroupViT against independent references:

- outputs of NVlabs/GroupViT's own modules (tiny random weights; fixture numbers made by
  running the official code, see docs/groupvit.md "Fixtures"): image/text embeddings,
  both stages' soft and hard assignments, and the zero-shot segmentation logits;
- transformers' GroupViTModel (small random config, offline), weights converted both ways;
- the released checkpoints' key names and shapes (fixture read from the official modules).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipheads.core.errors import UserError
from clipheads.tasks.groupvit.config import OfficialModel, SegmentConfig
from clipheads.tasks.groupvit.hf import hf_to_official, official_to_hf
from clipheads.tasks.groupvit.official import GroupViT
from clipheads.tasks.groupvit.segment import GroupSegmenter, group_maps

FIX = Path(__file__).parent / "fixtures" / "groupvit"


def tiny_cfg(**over) -> OfficialModel:
    base = dict(image_size=32, patch_size=8, embed_dim=32, depths=[1, 1, 1], num_heads=[2, 2, 2],
                num_group_tokens=[8, 4, 0], num_output_groups=[8, 4], context_length=16, vocab_size=100,
                text_width=32, text_layers=2, text_heads=2, output_dim=16, proj_hidden=96, multi_label=3)
    base.update(over)
    return OfficialModel(**base)


@pytest.fixture(scope="module")
def official():
    tensors = load_file(str(FIX / "official_tiny.safetensors"))
    model = GroupViT(tiny_cfg()).eval()
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    model.load_state_dict(state, strict=True)
    return model, tensors


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


@torch.no_grad()
@pytest.mark.parametrize("which", ["a", "b"])
def test_matches_official_code(official, which):
    model, t = official
    grouped = model.group(t[f"images_{which}"])
    image, groups = model.embed_groups(grouped)
    _close(image, t[f"image_x_{which}"])
    _close(groups, t[f"image_feat_{which}"])
    for stage, assignment in enumerate(grouped.assignments):
        _close(assignment.soft, t[f"soft_attn_{which}_{stage}"][:, 0])
        _close(assignment.hard, t[f"hard_attn_{which}_{stage}"][:, 0])
    _close(model.encode_text(t["tokens"]), t["text_x"])


@torch.no_grad()
@pytest.mark.parametrize("with_bg", [True, False])
def test_segmentation_logits_match_official_encode_decode(official, with_bg):
    model, t = official
    pixels = t["images_a"][:1]
    labels = (["background"] if with_bg else []) + [f"c{i}" for i in range(7)]
    seg = GroupSegmenter(model, t["seg_text"], labels, SegmentConfig(short_side=0, crop=0, bg_thresh=0.95),
                         background_index=0 if with_bg else None)
    _close(seg.window_scores(pixels), t["seg_logits_bg" if with_bg else "seg_logits_nobg"])
    chained = group_maps(model.group(pixels), (32, 32))
    _close(chained.permute(0, 2, 3, 1), t["seg_attn_map_1"], 1e-5)


def test_released_checkpoint_keys_load_without_missing_or_unexpected():
    keys = json.loads((FIX / "official_keys.json").read_text())
    for name, multi in (("group_vit_gcc_yfcc_30e", 3), ("group_vit_gcc_redcap_30e", 0)):
        with torch.device("meta"):
            model = GroupViT(OfficialModel(multi_label=multi))
        own = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert own == {k: list(v) for k, v in keys[name]["keys"].items()}, name
        assert len(own) == keys[name]["num_keys"] == (407 if multi else 406)


# transformers -------------------------------------------------------------------------------
def _hf_model():
    from transformers import GroupViTConfig, GroupViTModel
    cfg = GroupViTConfig(
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=3, depths=[1, 1, 1],
                           num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4], num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5,
                           assign_eps=1.0, assign_mlp_ratio=[0.5, 4]),
        text_config=dict(vocab_size=100, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=98, eos_token_id=99),
        projection_dim=16, projection_intermediate_dim=64)
    torch.manual_seed(0)
    model = GroupViTModel(cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():   # randomise everything, so biases, positions, tokens and BN stats matter
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            if p.ndim == 1 and ("norm" in name or name.endswith(".1.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(1, 98, (2, 16), generator=g)
    ids[:, 0] = 98
    ids[0, 9], ids[0, 10:] = 99, 0
    ids[1, 15] = 99
    return pixels, ids


@torch.no_grad()
def test_matches_transformers_groupvit_both_ways():
    hf = _hf_model()
    pixels, ids = _inputs()
    ours = GroupViT(tiny_cfg(text_width=64, text_heads=2, proj_hidden=64, multi_label=3)).eval()
    ours.load_state_dict(hf_to_official(hf.state_dict(), multi_label_logit_scale=math.log(1 / 0.07)), strict=True)
    out = hf(input_ids=ids, pixel_values=pixels, output_attentions=True, return_dict=True)
    grouped = ours.group(pixels)
    image, _ = ours.embed_groups(grouped)
    text = ours.encode_text(ids)
    _close(torch.nn.functional.normalize(image, dim=-1), out.image_embeds)
    _close(torch.nn.functional.normalize(text, dim=-1), out.text_embeds)
    _close(image, hf.get_image_features(pixel_values=pixels).pooler_output)
    for ours_a, theirs in zip(grouped.assignments, out.vision_model_output.attentions):
        _close(ours_a.soft, theirs)
        top2 = theirs.topk(2, dim=1).values      # hard assignments are stable only away from ties
        assert (top2[:, 0] - top2[:, 1]).min() > 1e-4
    back = official_to_hf(ours.state_dict())
    theirs = hf.state_dict()
    assert set(back) == set(theirs)
    for k in theirs:
        assert torch.equal(back[k].to(theirs[k].dtype), theirs[k]), k


def test_hf_conversion_refuses_foreign_keys():
    with pytest.raises(UserError, match="no official equivalent"):
        hf_to_official({"vision_model.something.weight": torch.zeros(1)})
