"""A trained LSeg head on disk: `lseg_head.safetensors` (the net's state dict) plus
`lseg_head.json` (architecture, the backbone it was trained on, label sets, metrics).

The JSON makes a head self-describing: `lseg infer --head DIR` rebuilds the same net,
picks the backbone it needs, and warns when the backbone's weights differ from the
ones the head was trained on. The bundled tiny-world head lives in
clipheads/tasks/lseg/assets/lseg_tiny/.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from clipheads.core.atomic import atomic_path, atomic_write_text
from clipheads.core.config import from_dict
from clipheads.core.errors import UserError

from .config import ModelConfig

log = logging.getLogger(__name__)
WEIGHTS = "lseg_head.safetensors"
META = "lseg_head.json"
FORMAT = "clipheads-lseg-head"
VERSION = 1


@dataclass
class HeadInfo:
    """Everything needed to rebuild and use a head besides its tensors."""

    model: ModelConfig
    backbone: str
    text_dim: int
    templates: str
    infer: dict[str, Any] = field(default_factory=dict)   # size, base_size, crop_size, stride
    backbone_weights: str | None = None        # a file next to the head (converted checkpoints)
    backbone_fingerprint: str | None = None
    labels: list[str] = field(default_factory=list)     # the training label set
    heldout: list[str] = field(default_factory=list)    # classes kept out of training
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}


def bundled_head_dir() -> Path:
    return Path(str(resources.files("clipheads.tasks.lseg") / "assets" / "lseg_tiny"))


def head_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, json) for a head folder or either of its two files."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return folder / WEIGHTS, folder / META


def save_head(folder: Path, state: dict[str, torch.Tensor], info: HeadInfo, half: bool = False) -> Path:
    """Write the net's state dict and its description atomically (temporary names, then
    renamed); `half` stores floats as fp16. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in state.items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    atomic_write_text(folder / META, json.dumps(info.to_json(), indent=2) + "\n")
    return folder


def read_info(path: str | Path) -> HeadInfo:
    weights, meta = head_files(path)
    if not meta.is_file() or not weights.is_file():
        raise UserError(f"no LSeg head at {path}: expected {WEIGHTS} and {META} (the 'head' folder "
                        "written by 'clipheads lseg train' or tools/convert_lseg.py)")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {meta}: {exc}") from exc
    if data.get("format") != FORMAT:
        raise UserError(f"{meta} is not an LSeg head description (format {data.get('format')!r})")
    if int(data.get("version", 0)) > VERSION:
        raise UserError(f"{meta} has version {data['version']}; this clipheads reads up to "
                        f"{VERSION}: upgrade clipheads")
    body = {k: v for k, v in data.items() if k not in ("format", "version")}
    body["model"] = from_dict(ModelConfig, body.get("model", {}), where=f"{meta}.model")
    return from_dict(HeadInfo, body, where=str(meta))


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    weights, _ = head_files(path)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise UserError(f"cannot read {weights}: truncated or corrupt ({type(exc).__name__})") from exc


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Missing, unexpected and mis-shaped keys, named in one line (works on meta tensors)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
           for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        parts = [f"{len(v)} {name}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
                 for name, v in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad)) if v]
        raise UserError(f"{where} does not fit this LSeg net: {'; '.join(parts)}")


def load_state(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load after `check_state`."""
    own = net.state_dict()
    check_state(own, state, where)
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def check_backbone(info: HeadInfo, backbone, where: str) -> None:
    """Warn (once, one line) when the backbone differs from the one the head was trained on."""
    if info.backbone_fingerprint and info.backbone_fingerprint != backbone.fingerprint:
        log.warning("LSeg head %s was trained on backbone %s (fingerprint %s) but %s has fingerprint "
                    "%s; masks will be poor until the head is retrained on it", where, info.backbone,
                    info.backbone_fingerprint, backbone.spec, backbone.fingerprint)
    if info.text_dim != backbone.embed_dim:
        raise UserError(f"LSeg head {where} needs {info.text_dim}-d text embeddings but backbone "
                        f"{backbone.spec} gives {backbone.embed_dim}-d; use --backbone {info.backbone}")
