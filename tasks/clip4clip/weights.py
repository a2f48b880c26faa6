"""A trained CLIP4Clip head on disk (`clip4clip_head.safetensors` + `.json`): the JSON
rebuilds the head and says which backbone's feature space it lives in, how frames were
sampled and its metrics. The bundled tiny-world head lives in clipheads/tasks/clip4clip/assets/."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from clipheads.core.head_folder import HeadFolder

from .model import HeadSpec

FOLDER = HeadFolder("clip4clip_head", "clipheads-clip4clip-head", 1, "CLIP4Clip head", "'clipheads clip4clip train'")


@dataclass
class HeadInfo:
    spec: HeadSpec
    backbone: str
    backbone_fingerprint: str
    max_frames: int = 12
    slice_framepos: int = 2
    max_words: int = 32
    backbone_weights: str | None = None   # a CLIP file next to the head (imported checkpoints)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def bundled_head_dir() -> Path:
    return Path(str(resources.files("clipheads.tasks.clip4clip") / "assets" / "clip4clip_tiny"))


def save_head(folder: Path, state: dict[str, torch.Tensor], info: HeadInfo, half: bool = False) -> Path:
    return FOLDER.save_dataclass(folder, state, info, half=half)


def read_info(path: str | Path) -> HeadInfo:
    return FOLDER.read_dataclass(HeadInfo, path)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    return FOLDER.read_state(path)


def head_id(spec: HeadSpec, state: dict[str, torch.Tensor]) -> str:
    """16 hex of the head kind and every weight: which head made an index's embeddings."""
    h = hashlib.sha256(repr(dataclasses.astuple(spec)).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
