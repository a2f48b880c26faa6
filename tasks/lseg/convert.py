"""Import the official LSeg checkpoint (isl-org/lang-seg `demo_e200.ckpt`, a PyTorch
Lightning file) as a head of this package.

The official `LSegModule` holds `net` (an `LSegNet`) whose state dict has three parts:
`net.pretrained.model.*` (the timm ViT-L/16), `net.pretrained.act_postprocess{1-4}.*`
(readout + reassemble) and `net.scratch.*` (3x3 convs, four fusion blocks, head1,
optional head_block), plus `net.clip_pretrained.*`, a whole OpenAI CLIP ViT-B/32 of
which LSeg only uses the text tower. Every key is accounted for: mapped onto
`LSegNet`, written to the CLIP file the head's text bank loads, or dropped because the
official forward never reads it (listed in the report).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipheads.core.atomic import atomic_path
from clipheads.core.backbone.weights import guess_openai_arch
from clipheads.core.checkpoint_pickle import load_checkpoint_object
from clipheads.core.errors import UserError

from .config import ModelConfig, TimmConfig

PREFIX = "net."
CLIP_FILE = "clip.safetensors"
# (official ViT width, depth, patch) -> timm model the official code builds
TIMM_NAMES = {(1024, 24, 16): "vit_large_patch16_384", (768, 12, 32): "vit_base_patch32_384",
              (768, 12, 16): "vit_base_patch16_384"}

_POST = re.compile(r"^pretrained\.act_postprocess(\d)\.(\d)\.(.*)$")
_RN = re.compile(r"^scratch\.layer(\d)_rn\.(.*)$")
_FUSE = re.compile(r"^scratch\.refinenet(\d)\.(resConfUnit1|resConfUnit2|out_conv)\.(.*)$")


@dataclass
class Converted:
    """The head's state dict and config, the CLIP state dict, and what was dropped."""

    head_state: dict[str, torch.Tensor]
    clip_state: dict[str, torch.Tensor]
    model: ModelConfig
    text_dim: int
    dropped: list[str] = field(default_factory=list)


def load_official(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The `net.*` state dict of a Lightning checkpoint (or of a bare state dict).

    Loaded without running code from the file (`clipheads.core.checkpoint_pickle`): data
    only, or, when Lightning pickled its hyper-parameters, with those objects stubbed.
    `trust_pickle` loads it with plain pickle instead, which may run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    obj = load_checkpoint_object(path, trust_pickle=trust_pickle).obj
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(k.startswith(PREFIX) for k in state):
        raise UserError(f"{path} is not an official LSeg checkpoint: no '{PREFIX}*' keys in its state dict")
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def _need(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"official checkpoint lacks '{PREFIX}{key}'; is it an LSeg ViT checkpoint?")
    return state[key]


def infer_model(state: dict[str, torch.Tensor], layers: list[int] | None = None,
                arch_option: int | None = None, block_depth: int | None = None,
                activation: str = "lrelu", timm_name: str | None = None,
                timm_kwargs: dict | None = None) -> tuple[ModelConfig, int]:
    """The ModelConfig (and text dim) the official tensors describe; what shapes cannot
    tell (tapped blocks, attention heads, regularisation variant) follows the official
    presets or the caller's overrides."""
    pos = _need(state, "pretrained.model.pos_embed")
    proj = _need(state, "pretrained.model.patch_embed.proj.weight")
    width, patch = int(pos.shape[-1]), int(proj.shape[-1])
    depth = len({k.split(".")[3] for k in state if k.startswith("pretrained.model.blocks.")})
    grid = int((pos.shape[1] - 1) ** 0.5)
    name = timm_name or TIMM_NAMES.get((width, depth, patch))
    kwargs = dict(timm_kwargs or {})
    if name is None:
        name = "vit_base_patch16_384"
        kwargs = {"embed_dim": width, "depth": depth, "num_heads": max(1, width // 64),
                  "patch_size": patch, "img_size": grid * patch, **kwargs}
    n = 4
    channels = [int(_need(state, f"pretrained.act_postprocess{i}.3.weight").shape[0]) for i in range(1, n + 1)]
    strides = []
    for i in range(1, n + 1):
        w = state.get(f"pretrained.act_postprocess{i}.4.weight")
        if w is None:
            strides.append(patch)
        elif i == n:                      # the deepest tap: 3x3 stride-2 conv down
            strides.append(patch * 2)
        else:                             # transposed conv up by its kernel size
            strides.append(patch // int(w.shape[-1]))
    head1 = _need(state, "scratch.head1.weight")
    has_block = "scratch.head_block.depthwise.depthwise.weight" in state
    if has_block and arch_option not in (1, 2):
        raise UserError("the checkpoint has spatial regularisation weights (scratch.head_block); pass "
                        "--arch-option 1|2 and --block-depth N as used for its training")
    if not has_block and arch_option in (1, 2):
        raise UserError(f"--arch-option {arch_option} given but the checkpoint has no scratch.head_block weights")
    cfg = ModelConfig(
        encoder="timm", layers=layers or [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1],
        readout="project" if "pretrained.act_postprocess1.0.project.0.weight" in state else "ignore",
        channels=channels, strides=strides, features=int(_need(state, "scratch.layer1_rn.weight").shape[0]),
        use_bn="scratch.refinenet1.resConfUnit2.bn1.weight" in state,
        arch_option=arch_option if has_block else 0, block_depth=block_depth or 0, activation=activation,
        timm=TimmConfig(name=name, kwargs=kwargs))
    return cfg.validate(), int(head1.shape[0])


def map_key(key: str, n_levels: int = 4) -> str | None:
    """Our LSegNet key for an official (prefix-stripped) key; None when the official forward
    never reads it; raises for a key this layout does not know."""
    if key.startswith("pretrained.model."):
        rest = key[len("pretrained.model."):]
        if rest.startswith(("head.", "pre_logits.", "fc_norm.", "head_dist.", "dist_token")):
            return None                   # classifier parts: unused by forward_flex's taps
        return f"encoder.vit.{rest}"
    m = _POST.match(key)
    if m:
        level, idx, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
        part = {"0": "readout", "3": "project", "4": "resample"}.get(idx)
        if part == "readout" and rest.startswith("project.0."):
            return f"decoder.reassemble.{level}.readout.proj.{rest[len('project.0.'):]}"
        if part in ("project", "resample"):
            return f"decoder.reassemble.{level}.{part}.{rest}"
    m = _RN.match(key)
    if m:
        return f"decoder.layer_rn.{int(m.group(1)) - 1}.{m.group(2)}"
    m = _FUSE.match(key)
    if m:
        level, part, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
        if part == "resConfUnit1":
            # the deepest fusion block is called without a skip: its first unit never runs
            return None if level == n_levels - 1 else f"decoder.fusion.{level}.skip_unit.{rest}"
        return f"decoder.fusion.{level}.{'unit' if part == 'resConfUnit2' else 'out_conv'}.{rest}"
    if key.startswith("scratch.head1."):
        return f"head.proj.{key[len('scratch.head1.'):]}"
    if key.startswith("scratch.head_block.depthwise.depthwise."):
        return f"head.spatial.conv.{key.rsplit('.', 1)[-1]}"
    raise UserError(f"unknown key '{PREFIX}{key}' in the official checkpoint; this converter knows "
                    "the lang-seg LSegNet layout (pretrained.*, scratch.*, clip_pretrained.*)")


def convert(state: dict[str, torch.Tensor], **overrides) -> Converted:
    """Split and rename the official tensors (see `infer_model` for `overrides`)."""
    model, text_dim = infer_model(state, **overrides)
    head, clip, dropped = {}, {}, []
    for key, value in state.items():
        if key.startswith("clip_pretrained."):
            clip[key[len("clip_pretrained."):]] = value
            continue
        ours = map_key(key, len(model.layers))
        if ours is None:
            dropped.append(PREFIX + key)
        else:
            head[ours] = value
    if not clip:
        raise UserError("the checkpoint has no net.clip_pretrained.* (the CLIP text encoder LSeg uses)")
    return Converted(head, clip, model, text_dim, sorted(dropped))


def export(conv: Converted, out: Path, source: str, clip_arch: str | None = None) -> dict:
    """Write the head folder (lseg_head.* + clip.safetensors), after proving both parts
    load: the CLIP file through the core backbone loader, the head against an LSegNet
    built on the meta device (no memory for ViT-L)."""
    from safetensors.torch import save_file

    from clipheads.core.backbone import FrozenCLIP

    from .encoders import TimmViTEncoder
    from .model import LSegNet
    from .weights import HeadInfo, check_state, save_head

    arch = clip_arch or guess_openai_arch(conv.clip_state, "net.clip_pretrained")
    out.mkdir(parents=True, exist_ok=True)
    clip_path = out / CLIP_FILE
    with atomic_path(clip_path) as tmp:
        save_file({k: v.contiguous() for k, v in conv.clip_state.items()}, str(tmp),
                  metadata={"quick_gelu": "true"})
    backbone = FrozenCLIP.from_spec(arch, clip_path)
    if backbone.embed_dim != conv.text_dim:
        raise UserError(f"the head maps pixels to {conv.text_dim}-d but CLIP {arch} embeds text in "
                        f"{backbone.embed_dim}-d; pass the right --clip-arch")
    with torch.device("meta"):
        t = conv.model.timm
        net = LSegNet(TimmViTEncoder(t.name, conv.model.layers, None, t.kwargs, t.mean, t.std), conv.model,
                      conv.text_dim)
    check_state(net.state_dict(), conv.head_state, source)
    info = HeadInfo(model=conv.model, backbone=arch, text_dim=conv.text_dim, templates="{}",
                    infer={"size": 480, "base_size": 520, "crop_size": 480, "stride": 320},
                    backbone_weights=CLIP_FILE, backbone_fingerprint=backbone.fingerprint,
                    notes=f"converted from {Path(source).name} by tools/convert_lseg.py; "
                          f"{len(conv.dropped)} keys the official forward never reads were dropped")
    save_head(out, conv.head_state, info)
    return {"out": str(out), "clip_arch": arch, "head_tensors": len(conv.head_state),
            "clip_tensors": len(conv.clip_state), "dropped": conv.dropped,
            "model": {"timm": conv.model.timm.name, "layers": conv.model.layers,
                      "channels": conv.model.channels, "strides": conv.model.strides,
                      "features": conv.model.features, "text_dim": conv.text_dim}}
