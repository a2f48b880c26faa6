"""Reading CLIP checkpoints from files, and loading them into a model with loud checks.

Formats: OpenAI-layout state dicts (`.pt`/`.bin`, text tower at the top level), open_clip
checkpoints (bare or training dicts with `state_dict` and a `module.` prefix), and
`.safetensors`. TorchScript archives (OpenAI's original downloads) execute code when
loaded, so they are refused unless the caller opts in.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import open_clip
import torch
from torch import nn

from ..errors import UserError

_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")
_TEXT_TOWER_PREFIXES = ("text_projection", "positional_embedding", "token_embedding",
                        "transformer", "ln_final")


@dataclass
class CheckpointFile:
    """A state dict read from disk plus the activation it records (None: not recorded)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    quick_gelu: bool | None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _recorded_activation(meta: Mapping[str, object] | None, path: Path) -> bool | None:
    """QuickGELU as recorded by the file's metadata, or an open_clip_config.json beside it."""
    if meta:
        if "quick_gelu" in meta:
            return str(meta["quick_gelu"]).lower() in ("1", "true")
        cfg = meta.get("model_cfg")
        if isinstance(cfg, str):
            cfg = json.loads(cfg)
        if isinstance(cfg, dict):
            return bool(cfg.get("quick_gelu", False))
    side = path.parent / "open_clip_config.json"
    if side.is_file():
        cfg = json.loads(side.read_text()).get("model_cfg", {})
        return bool(cfg.get("quick_gelu", False))
    return None


def read_checkpoint(path: str | Path, allow_torchscript: bool = False) -> CheckpointFile:
    """Read a checkpoint into a flat CPU state dict; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    meta: dict | None = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        elif _is_torchscript(path):
            if not allow_torchscript:
                raise UserError(f"{path} is a TorchScript archive, which runs code when loaded; "
                                "pass --allow-torchscript if you trust it, or convert it to a "
                                "state dict first")
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            meta = {"quick_gelu": True}  # OpenAI's archives were all trained with QuickGELU
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
                meta = {k: v for k, v in obj.items() if k in ("model_cfg", "quick_gelu")}
                obj = obj["state_dict"]
            if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise UserError(f"{path} holds no state dict of tensors; expected an OpenAI, "
                                "open_clip or safetensors CLIP checkpoint")
            state = obj
    except UserError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for truncated files
        raise UserError(f"cannot read weights file {path}: truncated or corrupt "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from exc
    if state and next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in _NON_PARAM_KEYS:
        state.pop(key, None)
    return CheckpointFile(path, state, _recorded_activation(meta, path))


def _match_text_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI/CLIP layouts keep the text tower at the top; CustomTextCLIP nests it in `text.`."""
    has_nested = any(k.startswith("text.") for k in state)
    if hasattr(model, "text") and not has_nested:
        return open_clip.model.convert_to_custom_text_state_dict(state)
    if not hasattr(model, "text") and has_nested:
        return {(k[5:] if k.startswith("text.") and k[5:].startswith(_TEXT_TOWER_PREFIXES) else k): v
                for k, v in state.items()}
    return state


def _guess_arch(state: Mapping[str, torch.Tensor]) -> list[str]:
    """open_clip architectures whose vision tower matches the file's shapes."""
    conv = state.get("visual.conv1.weight")
    proj = state.get("text_projection", state.get("text.text_projection"))
    if conv is None or proj is None or conv.ndim != 4:
        return []
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    found = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        v = cfg.get("vision_cfg", {})
        if (v.get("width") == conv.shape[0] and v.get("patch_size") == conv.shape[-1]
                and v.get("layers") == layers and cfg.get("embed_dim") == proj.shape[-1]):
            found.append(name)
    return found[:4]


def load_into(model: nn.Module, ckpt: CheckpointFile, arch: str, quick_gelu: bool) -> None:
    """Load with strict key/shape/activation checks; the error names what does not fit."""
    if ckpt.quick_gelu is not None and ckpt.quick_gelu != quick_gelu:
        want = "QuickGELU" if ckpt.quick_gelu else "GELU"
        have = "QuickGELU" if quick_gelu else "GELU"
        fix = f"{arch}-quickgelu" if ckpt.quick_gelu else arch.removesuffix("-quickgelu")
        raise UserError(f"{ckpt.path} was trained with {want} but architecture '{arch}' uses "
                        f"{have}; use --backbone {fix}")
    state = _match_text_layout(model, dict(ckpt.state_dict))
    own = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].shape != own["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        guess = [g for g in _guess_arch(state) if g != arch]
        hint = f"; it looks like {' or '.join(guess)}" if guess else ""
        raise UserError(f"{ckpt.path} does not fit architecture '{arch}': "
                        f"{'; '.join(parts)}{hint}")
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
