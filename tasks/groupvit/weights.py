"""GroupViT weights on disk.

- A trained head folder (`groupvit_head.safetensors` + `groupvit_head.json`), written by
  `groupvit train` for either model: the JSON says which model, its architecture, the
  backbone a grouping head was trained on, and the segmentation settings it was
  evaluated with. The bundled tiny-world head is in clipheads/tasks/groupvit/assets/.
- The official NVlabs checkpoints (`group_vit_gcc_yfcc_30e-879422e0.pth`, ...): the
  state dict is `ckpt["model"]`; the files also pickle an omegaconf config, so they
  are read by the restricted unpickler (nothing in the file runs). transformers'
  `GroupViTModel` state dicts (.bin/.safetensors) are converted to the official names.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from clipheads.core.config import from_dict
from clipheads.core.errors import UserError
from clipheads.core.head_folder import HeadFolder
from clipheads.core.state_dict import load_state_dict_strict

from .config import HeadModel, OfficialModel

log = logging.getLogger(__name__)
FOLDER = HeadFolder("groupvit_head", "clipheads-groupvit-head", 1, "GroupViT head", "'clipheads groupvit train'")


@dataclass
class HeadInfo:
    """Everything besides the tensors that rebuilds a trained GroupViT."""

    model: str                                    # "head" or "official"
    head: HeadModel | None = None
    official: OfficialModel | None = None
    backbone: str | None = None                   # grouping heads: the frozen CLIP they read
    backbone_fingerprint: str | None = None
    segment: dict[str, Any] = field(default_factory=dict)   # settings the metrics were measured with
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def bundled_head_dir() -> Path:
    return Path(str(resources.files("clipheads.tasks.groupvit") / "assets" / "groupvit_tiny"))


def save_head(folder: Path, state: dict[str, torch.Tensor], info: HeadInfo, half: bool = False) -> Path:
    return FOLDER.save(folder, state, dataclasses.asdict(info), half=half)


def read_info(path: str | Path) -> HeadInfo:
    body = FOLDER.read_info(path)
    meta = FOLDER.files(path)[1]
    for key, cls in (("head", HeadModel), ("official", OfficialModel)):
        if body.get(key) is not None:
            body[key] = from_dict(cls, body[key], where=f"{meta}.{key}")
    return from_dict(HeadInfo, body, where=str(meta))


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    return FOLDER.read_state(path)


def is_head_folder(path: str | Path) -> bool:
    return FOLDER.exists(path)


def official_state(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The official-name state dict of an NVlabs `.pth` (restricted unpickling unless
    `trust_pickle`), or of a transformers GroupViTModel file (converted)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GroupViT checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise UserError(f"cannot read {path}: truncated or corrupt ({type(exc).__name__})") from exc
    else:
        from clipheads.core.checkpoint_pickle import load_checkpoint_object
        obj = load_checkpoint_object(path, trust_pickle=trust_pickle).obj
        state = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{path} holds no GroupViT state dict (expected ckpt['model'], as NVlabs "
                            "saves it, or a plain state dict)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    from .hf import is_hf_state, hf_to_official
    return hf_to_official(state) if is_hf_state(state) else state


def load_official(model: torch.nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Strictly load an official/HF checkpoint into `model` (a `GroupViT`): keys and shapes
    must match its config, or one line names what is missing/unexpected."""
    state = official_state(path, trust_pickle)
    hint = ""
    if "multi_label_logit_scale" in state and not hasattr(model, "multi_label_logit_scale"):
        hint = "; the file has a multi-label logit scale: use official.multi_label=3 (the GCC+YFCC model)"
    elif hasattr(model, "multi_label_logit_scale") and "multi_label_logit_scale" not in state \
            and any(k.startswith("img_encoder.") for k in state):
        hint = "; the file has no multi-label logit scale: use official.multi_label=0 (the GCC+RedCaps model)"
    elif not any(k.startswith("img_encoder.") for k in state):
        hint = "; it is not a GroupViT checkpoint (no img_encoder.* keys)"
    load_state_dict_strict(model, state, str(path), "this GroupViT", hint)


def convert_official(path: str | Path, official: OfficialModel, out: Path, to: str = "head",
                     trust_pickle: bool = False) -> dict[str, Any]:
    """An NVlabs / transformers GroupViT file -> a clipheads head folder (`to="head"`) or a
    transformers-named safetensors file (`to="hf"`), after the strict load. Returns a report."""
    from safetensors.torch import save_file

    from clipheads.core.atomic import atomic_path

    from .hf import official_to_hf
    from .official import GroupViT
    model = GroupViT(official)
    load_official(model, path, trust_pickle)
    state = model.state_dict()
    if to == "hf":
        out.parent.mkdir(parents=True, exist_ok=True)
        hf = {k: v.contiguous() for k, v in official_to_hf(state).items()}
        with atomic_path(out) as tmp:
            save_file(hf, str(tmp), metadata={"format": "pt"})
        return {"source": str(path), "written": str(out), "layout": "transformers GroupViTModel", "keys": len(hf),
                "dropped": [k for k in ("multi_label_logit_scale",) if k in state]}
    if to != "head":
        raise UserError(f"--to {to!r}: use head or hf")
    info = HeadInfo(model="official", official=official, notes=f"converted from {Path(path).name}")
    save_head(out, state, info)
    return {"source": str(path), "written": str(out), "layout": "clipheads head folder (model=official)",
            "keys": len(state)}
