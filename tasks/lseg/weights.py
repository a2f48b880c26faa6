"""A trained LSeg head on disk: `lseg_head.safetensors` (the net's state dict) plus
`lseg_head.json` (architecture, the backbone it was trained on, label sets, metrics).

The JSON makes a head self-describing: `lseg infer --head DIR` rebuilds the same net,
picks the backbone it needs, and warns when the backbone's weights differ from the
ones the head was trained on. The bundled tiny-world head lives in
clipheads/tasks/lseg/assets/lseg_tiny/.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipheads.core.config import from_dict
from clipheads.core.errors import UserError
from clipheads.core.head_folder import HeadFolder
from clipheads.core.state_dict import check_state_dict, load_state_dict_strict

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

FOLDER = HeadFolder(WEIGHTS.split(".")[0], FORMAT, VERSION, "LSeg head",
                    "'clipheads lseg train' or tools/convert_lseg.py")


def bundled_head_dir() -> Path:
    return Path(str(resources.files("clipheads.tasks.lseg") / "assets" / "lseg_tiny"))


def head_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, json) for a head folder or either of its two files."""
    return FOLDER.files(path)


def save_head(folder: Path, state: dict[str, torch.Tensor], info: HeadInfo, half: bool = False) -> Path:
    """Write the net's state dict and its description atomically; `half` stores floats as
    fp16. Returns the folder."""
    return FOLDER.save(folder, state, dataclasses.asdict(info), half=half)


def read_info(path: str | Path) -> HeadInfo:
    body = FOLDER.read_info(path)
    meta = FOLDER.files(path)[1]
    body["model"] = from_dict(ModelConfig, body.get("model", {}), where=f"{meta}.model")
    return from_dict(HeadInfo, body, where=str(meta))


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    return FOLDER.read_state(path)


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Missing, unexpected and mis-shaped keys, named in one line (works on meta tensors)."""
    check_state_dict(own, state, where, "this LSeg net")


def load_state(net: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load after `check_state`."""
    load_state_dict_strict(net, state, where, "this LSeg net")


def check_backbone(info: HeadInfo, backbone, where: str) -> None:
    """Warn (once, one line) when the backbone differs from the one the head was trained on."""
    if info.backbone_fingerprint and info.backbone_fingerprint != backbone.fingerprint:
        log.warning("LSeg head %s was trained on backbone %s (fingerprint %s) but %s has fingerprint "
                    "%s; masks will be poor until the head is retrained on it", where, info.backbone,
                    info.backbone_fingerprint, backbone.spec, backbone.fingerprint)
    if info.text_dim != backbone.embed_dim:
        raise UserError(f"LSeg head {where} needs {info.text_dim}-d text embeddings but backbone "
                        f"{backbone.spec} gives {backbone.embed_dim}-d; use --backbone {info.backbone}")
