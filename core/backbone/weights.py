"""Reading CLIP checkpoints from files, and loading them into a model with loud checks.

Formats: OpenAI-layout state dicts (`.pt`/`.bin`, text tower at the top level), open_clip
checkpoints (bare or training dicts with `state_dict` and a `module.` prefix), and
`.safetensors`. TorchScript archives (OpenAI's original downloads) execute code when
loaded, so they are refused unless the caller opts in.

Activation: OpenAI trained every released CLIP with QuickGELU, open_clip's own models
mostly with GELU, and the keys of a bare open_clip `CLIP` state dict are exactly OpenAI's.
open_clip itself never guesses: it trusts the pretrained tag (`quick_gelu` in
`pretrained.py`) or the model config (`quick_gelu` key). A file states its activation when
its metadata (safetensors `quick_gelu`/`model_cfg`, a training dict's `model_cfg`) or an
`open_clip_config.json` beside it says so, or when it is a TorchScript archive (only OpenAI
shipped those). Otherwise it is taken for an *OpenAI release* -- and so QuickGELU -- only on
evidence open_clip-trained files lack (see `_openai_release`): an unwrapped, unprefixed
OpenAI-layout state dict that still carries the TorchScript constants
(`input_resolution`, `context_length`, `vocab_size`) or stores its weights in float16
(OpenAI's release precision; open_clip-trained files are normally float32). A bare
float16 copy of GELU weights with no metadata is therefore refused: record `quick_gelu`
in it, or pass allow_activation_mismatch. Anything else records no activation and is
loaded as the architecture says (a float32 copy of OpenAI weights included: nothing in
it tells it apart from open_clip's).
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import open_clip
import torch
from torch import nn

from ..errors import UserError, first_line
from ..state_dict import check_state_dict, state_dict_problems

log = logging.getLogger(__name__)

_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")
_TEXT_TOWER_PREFIXES = ("text_projection", "positional_embedding", "token_embedding",
                        "transformer", "ln_final")
_OPENAI_TOP_KEYS = ("positional_embedding", "text_projection", "token_embedding.weight",
                    "ln_final.weight", "logit_scale", "visual.conv1.weight")
_OPENAI_VIT_KEYS = ("visual.proj", "visual.transformer.resblocks.0.attn.in_proj_weight")
_OPENAI_RN_KEYS = ("visual.attnpool.c_proj.weight",)


@dataclass
class CheckpointFile:
    """A state dict read from disk plus the activation it records (None: not recorded).

    `openai_release` says why the file was taken for one of OpenAI's QuickGELU releases
    (None: it was not); it only matters when `quick_gelu` is None."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    quick_gelu: bool | None
    openai_release: str | None = None


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
    wrapped = False
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
            # the causal text mask is a buffer in archives traced by open_clip, a constant in
            # OpenAI's; the model rebuilds it, so it is not a weight to check
            state = {k: v for k, v in state.items() if k != "attn_mask"}
            meta = {"quick_gelu": True}  # OpenAI's archives were all trained with QuickGELU
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
                meta = {k: v for k, v in obj.items() if k in ("model_cfg", "quick_gelu")}
                obj, wrapped = obj["state_dict"], True
            if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise UserError(f"{path} holds no state dict of tensors; expected an OpenAI, "
                                "open_clip or safetensors CLIP checkpoint")
            state = obj
    except UserError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for truncated files
        raise UserError(f"cannot read weights file {path}: truncated or corrupt "
                        f"({type(exc).__name__}: {first_line(exc, 120)})") from exc
    prefixed = bool(state) and next(iter(state)).startswith("module.")
    if prefixed:
        state = {k[len("module."):]: v for k, v in state.items()}
    release = None if wrapped or prefixed else _openai_release(state)
    for key in _NON_PARAM_KEYS:
        state.pop(key, None)
    return CheckpointFile(path, state, _recorded_activation(meta, path), release)


def _has_openai_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """OpenAI's key layout: text tower at the top level, no `text.` nesting, no logit_bias."""
    if not all(k in state for k in _OPENAI_TOP_KEYS):
        return False
    if any(k.startswith("text.") for k in state) or "logit_bias" in state:
        return False
    return all(k in state for k in _OPENAI_VIT_KEYS) or all(k in state for k in _OPENAI_RN_KEYS)


def _openai_release(state: Mapping[str, torch.Tensor]) -> str | None:
    """Why an unwrapped, unprefixed state dict is one of OpenAI's releases, or None.

    Same keys as a bare open_clip state dict, so the layout alone proves nothing; OpenAI's
    files also keep the TorchScript constants or float16 weights (clip.model.convert_weights),
    which open_clip-trained files do not. A float32 copy of OpenAI weights without
    constants is indistinguishable from open_clip's and is not flagged."""
    if not _has_openai_layout(state):
        return None
    constants = [k for k in _NON_PARAM_KEYS if k in state]
    if constants:
        return f"it carries OpenAI's TorchScript constants ({', '.join(constants)})"
    if state["visual.conv1.weight"].dtype == torch.float16:
        return "it has OpenAI's key layout and float16 weights"
    return None


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


def guess_openai_arch(clip_state: Mapping[str, torch.Tensor], what: str = "the checkpoint's CLIP") -> str:
    """The open_clip QuickGELU architecture (as OpenAI trained) matching an OpenAI-layout
    ViT CLIP state dict in every tower size, e.g. ViT-B-32-quickgelu for the CLIP inside
    an LSeg or CLIP4Clip checkpoint."""
    conv = clip_state.get("visual.conv1.weight")
    proj = clip_state.get("text_projection")
    if conv is None or proj is None:
        raise UserError(f"{what} is not an OpenAI ViT CLIP (no visual.conv1 / text_projection)")
    layers = len({k.split(".")[3] for k in clip_state if k.startswith("visual.transformer.resblocks.")})
    t_layers = len({k.split(".")[2] for k in clip_state if k.startswith("transformer.resblocks.")})
    image_size = int(round((clip_state["visual.positional_embedding"].shape[0] - 1) ** 0.5)) * conv.shape[-1]
    found = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if (v.get("width") == conv.shape[0] and v.get("patch_size") == conv.shape[-1]
                and v.get("layers") == layers and cfg.get("embed_dim") == proj.shape[-1]
                and t.get("width") == proj.shape[0] and t.get("layers") == t_layers
                and v.get("image_size") == image_size
                and (cfg.get("quick_gelu") or name.endswith("-quickgelu"))):
            found.append(name)
    if not found:
        raise UserError(f"no open_clip QuickGELU architecture matches {what}'s shapes; pass --clip-arch NAME")
    return sorted(found, key=len)[0]


def _activation_problem(ckpt: CheckpointFile, arch: str, quick_gelu: bool) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a QuickGELU/GELU mismatch, or None."""
    trained, origin = ckpt.quick_gelu, ""
    if trained is None and ckpt.openai_release:
        trained, origin = True, f" (an OpenAI CLIP release: {ckpt.openai_release})"
    if trained is None or trained == quick_gelu:
        return None
    want, have = ("QuickGELU", "GELU") if trained else ("GELU", "QuickGELU")
    return (f"{ckpt.path}{origin} was trained with {want} but architecture '{arch}' uses {have}",
            f"{_arch_fix(arch, trained)} (or pass --allow-activation-mismatch / "
            "allow_activation_mismatch=True if you really mean it)")


def _arch_fix(arch: str, quick_gelu: bool) -> str:
    """'use --backbone X' for open_clip's twin of `arch` with the other activation."""
    twin = f"{arch}-quickgelu" if quick_gelu else arch.removesuffix("-quickgelu")
    if twin != arch and twin in open_clip.list_models():
        return f"use --backbone {twin}"
    return f"use an architecture whose open_clip config has quick_gelu={str(quick_gelu).lower()}"


def check_activation(ckpt: CheckpointFile, arch: str, quick_gelu: bool,
                     allow_mismatch: bool = False) -> None:
    """Refuse weights trained with the other activation; `allow_mismatch` only warns."""
    problem = _activation_problem(ckpt, arch, quick_gelu)
    if problem is None:
        return
    what, fix = problem
    if not allow_mismatch:
        raise UserError(f"{what}; {fix}")
    log.warning("%s; loading it anyway (activation mismatch allowed)", what)


def load_into(model: nn.Module, ckpt: CheckpointFile, arch: str, quick_gelu: bool,
              allow_activation_mismatch: bool = False) -> None:
    """Load with strict key/shape/activation checks; the error names what does not fit.
    Keys and shapes are checked first: a file of another architecture is named as such."""
    state = _match_text_layout(model, dict(ckpt.state_dict))
    own = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].shape != own["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    _check_keys(ckpt, arch, own, state)
    check_activation(ckpt, arch, quick_gelu, allow_activation_mismatch)
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def _check_keys(ckpt: CheckpointFile, arch: str, own: Mapping[str, torch.Tensor],
                state: Mapping[str, torch.Tensor]) -> None:
    """Missing, unexpected and mis-shaped keys in one line, with the architectures it fits."""
    if not state_dict_problems(own, state):
        return
    guess = [g for g in _guess_arch(state) if g != arch]
    hint = f"; it looks like {' or '.join(guess)}" if guess else ""
    check_state_dict(own, state, str(ckpt.path), f"architecture '{arch}'", hint)
