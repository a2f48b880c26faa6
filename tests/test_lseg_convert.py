"""tools/convert_lseg.py on checkpoints laid out like isl-org/lang-seg's `demo_e200.ckpt`
(LSegModule.net: pretrained.model = timm ViT, pretrained.act_postprocess1-4, scratch.*,
clip_pretrained = OpenAI CLIP). The official layout is not re-typed here: it comes from
tests/fixtures/lseg/official_lsegnet_keys.json.gz, the state-dict names and shapes of
lang-seg's own LSegNet (ViT-L/16 and ViT-B/32, arch options 0/1/2) instantiated with random
weights outside this repository (docs/lseg.md). Checked: every key of every variant mapped
or dropped, a strict fit to our net; the small stand-in used for the logits test has
exactly the official names; logits equal an independent re-implementation of the forward."""
from __future__ import annotations

import gzip
import json
import math
import re
import runpy
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipheads.core.errors import UserError
from clipheads.core.backbone.weights import guess_openai_arch
from clipheads.tasks.lseg.convert import convert, map_key
from clipheads.tasks.lseg.encoders import TimmViTEncoder
from clipheads.tasks.lseg.model import LSegNet
from clipheads.tasks.lseg.weights import check_state

from conftest import TINY_VIT, random_clip

import timm  # noqa: E402 - the dev extra installs it
TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_lseg.py"
KEYS = Path(__file__).parent / "fixtures" / "lseg" / "official_lsegnet_keys.json.gz"


def official_keys() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """{'clip_vitl16_384/arch0': [(name, shape), ...], ...} as lang-seg's LSegNet.state_dict()."""
    data = json.loads(gzip.decompress(KEYS.read_bytes()))
    return {v: [(k, tuple(shape)) for k, shape in keys] for v, keys in data["variants"].items()}


def official_state(variant: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in official_keys()[variant]}


def name_pattern(key: str) -> str:
    """A key with its block indices replaced, to compare layouts of different depths."""
    return re.sub(r"(blocks|resblocks)\.\d+\.", r"\1.N.", key)


# --- the official layout, module for module (names as in lang-seg's lseg_vit/lseg_blocks) ---
class ProjectReadout(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * c, c), nn.GELU())

    def forward(self, x):
        return self.project(torch.cat([x[:, 1:], x[:, :1].expand_as(x[:, 1:])], dim=-1))


def postprocess(c, ch, resample):
    mods = [ProjectReadout(c), nn.Identity(), nn.Identity(), nn.Conv2d(c, ch, 1)]
    return nn.Sequential(*mods, resample) if resample is not None else nn.Sequential(*mods)


class RCU(nn.Module):
    def __init__(self, f, bn):
        super().__init__()
        self.bn = bn
        self.conv1 = nn.Conv2d(f, f, 3, padding=1, bias=not bn)
        self.conv2 = nn.Conv2d(f, f, 3, padding=1, bias=not bn)
        if bn:
            self.bn1, self.bn2 = nn.BatchNorm2d(f), nn.BatchNorm2d(f)

    def forward(self, x):
        out = self.conv1(F.relu(x))
        out = self.bn1(out) if self.bn else out
        out = self.conv2(F.relu(out))
        out = self.bn2(out) if self.bn else out
        return out + x


class Refine(nn.Module):
    def __init__(self, f, bn):
        super().__init__()
        self.out_conv = nn.Conv2d(f, f, 1)
        self.resConfUnit1, self.resConfUnit2 = RCU(f, bn), RCU(f, bn)

    def forward(self, *xs):
        out = xs[0] + self.resConfUnit1(xs[1]) if len(xs) == 2 else xs[0]
        out = F.interpolate(self.resConfUnit2(out), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(out)


class Official(nn.Module):
    """`LSegModule` minus Lightning: `net` holds pretrained, scratch and clip_pretrained."""

    def __init__(self, vit, clip_model, channels, features, text_dim, bn=True, head_block=False):
        super().__init__()
        c, p = vit.embed_dim, vit.patch_embed.patch_size[0]
        net = nn.Module()
        net.pretrained = nn.Module()
        net.pretrained.model = vit
        ups = [nn.ConvTranspose2d(channels[0], channels[0], 4, 4), nn.ConvTranspose2d(channels[1], channels[1], 2, 2),
               None, nn.Conv2d(channels[3], channels[3], 3, 2, 1)]
        for i in range(4):
            setattr(net.pretrained, f"act_postprocess{i + 1}", postprocess(c, channels[i], ups[i]))
        net.scratch = nn.Module()
        for i in range(4):
            setattr(net.scratch, f"layer{i + 1}_rn", nn.Conv2d(channels[i], features, 3, padding=1, bias=False))
            setattr(net.scratch, f"refinenet{i + 1}", Refine(features, bn))
        net.scratch.head1 = nn.Conv2d(features, text_dim, 1)
        if head_block:
            net.scratch.head_block = nn.Module()
            net.scratch.head_block.depthwise = nn.Module()
            net.scratch.head_block.depthwise.depthwise = nn.Conv2d(1, 1, 3, padding=1)
        net.clip_pretrained = clip_model
        self.net, self.patch = net, p

    def forward(self, x, text, hooks):
        """The official dataflow: forward_flex with hooks, act_postprocess, scratch, logits."""
        net, p = self.net, self.patch
        vit = net.pretrained.model
        h, w = x.shape[-2] // p, x.shape[-1] // p
        pos = vit.pos_embed
        g = int(math.sqrt(pos.shape[1] - 1))
        grid = pos[0, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear").permute(0, 2, 3, 1).reshape(1, h * w, -1)
        t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + torch.cat([pos[:, :1], grid], 1)
        acts = []
        for i, blk in enumerate(vit.blocks):
            t = blk(t)
            if i in hooks:
                acts.append(t)
        layers = []
        for i, a in enumerate(acts):
            post = getattr(net.pretrained, f"act_postprocess{i + 1}")
            r = post[0](a).transpose(1, 2).unflatten(2, (h, w))
            for m in post[3:]:
                r = m(r)
            layers.append(getattr(net.scratch, f"layer{i + 1}_rn")(r))
        s = net.scratch
        path = s.refinenet4(layers[3])
        path = s.refinenet3(path, layers[2])
        path = s.refinenet2(path, layers[1])
        path = s.refinenet1(path, layers[0])
        feats = F.normalize(s.head1(path), dim=1)
        logits = torch.einsum("bdhw,kd->bkhw", feats, F.normalize(text, dim=-1)) / 0.07
        return F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=True)


def randomise_bn(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def small_official(head_block=False):
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_384", pretrained=False, embed_dim=64, depth=4, num_heads=1,
                            patch_size=16, img_size=32)
    model = Official(vit, random_clip(TINY_VIT), [8, 16, 24, 24], 16, 32, head_block=head_block).eval()
    randomise_bn(model)
    return model


def lightning_file(model, path):
    state = {f"net.{k}" if not k.startswith("net.") else k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 200, "global_step": 1234, "pytorch-lightning_version": "1.6.0",
                "state_dict": state, "hyper_parameters": {"arch_option": 0, "block_depth": 0}}, path)
    return path


def test_converted_checkpoint_loads_strictly_and_matches_the_official_forward(tmp_path, capsys):
    official = small_official()
    ckpt = lightning_file(official, tmp_path / "demo_e200.ckpt")
    main = runpy.run_path(str(TOOL))["main"]
    report = main([str(ckpt), "--out", str(tmp_path / "head")])
    # every official key is mapped or listed as unused by the official forward
    assert report["clip_arch"] == TINY_VIT
    assert sorted(report["dropped"]) == sorted(
        [f"net.pretrained.model.head.{s}" for s in ("weight", "bias")]
        + [k for k in (f"net.{n}" for n in official.net.state_dict()) if "refinenet4.resConfUnit1" in k])
    meta = json.loads((tmp_path / "head" / "lseg_head.json").read_text())
    assert meta["model"]["layers"] == [0, 1, 2, 3] and meta["model"]["strides"] == [4, 8, 16, 32]
    assert meta["backbone_weights"] == "clip.safetensors" and meta["templates"] == "{}"

    from clipheads.core.task import Context
    from clipheads.tasks.lseg import LSegTask
    cfg = LSegTask.Config()
    task = LSegTask(cfg, Context(cfg))
    net, info = task.load_head(tmp_path / "head")
    assert task.cfg.backbone == TINY_VIT   # the head's own CLIP was picked up
    labels = ["wall", "sky", "a person"]
    text = task.text(labels, info.templates)
    clip = official.net.clip_pretrained
    ref_text = clip.encode_text(open_clip.get_tokenizer(TINY_VIT)(labels))
    assert torch.allclose(text, F.normalize(ref_text, dim=-1), atol=1e-4)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = net(x, text)
        ref = official(x, ref_text, hooks=[0, 1, 2, 3])
    assert ours.shape == ref.shape == (2, 3, 64, 96)
    assert torch.allclose(ours, ref, atol=1e-3), (ours - ref).abs().max()


def test_the_fixture_is_the_official_layout():
    keys = official_keys()
    assert sorted(keys) == [f"{b}/arch{a}" for b in ("clip_vitb32_384", "clip_vitl16_384") for a in (0, 1, 2)]
    l16 = dict(keys["clip_vitl16_384/arch0"])
    assert len(l16) == 730 and l16["pretrained.model.pos_embed"] == (1, 577, 1024)
    assert l16["pretrained.act_postprocess4.4.weight"] == (1024, 1024, 3, 3)
    assert l16["scratch.head1.weight"] == (512, 256, 1, 1)
    assert dict(keys["clip_vitl16_384/arch1"])["scratch.head_block.depthwise.depthwise.weight"] == (1, 1, 3, 3)


def test_small_stand_in_has_the_official_names():
    """The small net the logits test converts has exactly the official key names (block
    counts aside): only the ViT and CLIP sizes differ from lang-seg's."""
    ours = {name_pattern(k) for k in small_official().net.state_dict()}
    ref = {name_pattern(k) for k, _ in official_keys()["clip_vitl16_384/arch0"]}
    assert ours == ref, (sorted(ours - ref)[:5], sorted(ref - ours)[:5])
    ours_block = {name_pattern(k) for k in small_official(head_block=True).net.state_dict()}
    assert ours_block == {name_pattern(k) for k, _ in official_keys()["clip_vitl16_384/arch2"]}


@pytest.mark.parametrize("variant", ["clip_vitl16_384/arch0", "clip_vitl16_384/arch1", "clip_vitl16_384/arch2",
                                     "clip_vitb32_384/arch0", "clip_vitb32_384/arch1", "clip_vitb32_384/arch2"])
def test_official_layouts_map_without_missing_or_unexpected_keys(variant):
    state = official_state(variant)
    backbone, arch = variant.split("/")
    option = int(arch[-1])
    conv = convert(state, arch_option=option or None, block_depth=2 if option else None)
    vit_l = backbone == "clip_vitl16_384"
    assert conv.model.timm.name == ("vit_large_patch16_384" if vit_l else "vit_base_patch32_384")
    assert conv.model.layers == ([5, 11, 17, 23] if vit_l else [2, 5, 8, 11])   # the official hooks
    assert conv.model.strides == [4, 8, 16, 32] and conv.model.features == 256 and conv.model.use_bn
    assert conv.model.channels == ([256, 512, 1024, 1024] if vit_l else [96, 192, 384, 768])
    assert conv.model.arch_option == option
    assert conv.text_dim == 512 and guess_openai_arch(conv.clip_state) == "ViT-B-32-quickgelu"
    with torch.device("meta"):
        ours = LSegNet(TimmViTEncoder(conv.model.timm.name, conv.model.layers), conv.model, conv.text_dim)
        c = open_clip.get_model_config("ViT-B-32-quickgelu")
        clip = open_clip.CLIP(c["embed_dim"], c["vision_cfg"], c["text_cfg"], quick_gelu=True)
    check_state(ours.state_dict(), conv.head_state, variant)        # raises on any mismatch
    check_state(clip.state_dict(), conv.clip_state, variant + " CLIP")
    assert len(conv.head_state) + len(conv.clip_state) + len(conv.dropped) == len(state)
    assert sorted(conv.dropped) == sorted(
        ["net.pretrained.model.head.weight", "net.pretrained.model.head.bias"]
        + [f"net.{k}" for k in state if k.startswith("scratch.refinenet4.resConfUnit1.")])


def test_spatial_block_needs_its_variant_and_unknown_keys_are_named(tmp_path):
    state = official_state("clip_vitl16_384/arch1")
    with pytest.raises(UserError, match="--arch-option"):
        convert(state)
    conv = convert(state, arch_option=1, block_depth=2)
    assert conv.model.arch_option == 1 and "head.spatial.conv.weight" in conv.head_state
    with pytest.raises(UserError, match="unknown key 'net.scratch.extra.weight'"):
        map_key("scratch.extra.weight")
    bad = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(1)}}, bad)
    main = runpy.run_path(str(TOOL))["main"]
    with pytest.raises(SystemExit) as exc:
        main([str(bad), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
