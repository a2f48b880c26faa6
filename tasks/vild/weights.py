"""A trained ViLD detector on disk (`vild_detector.safetensors` + `vild_detector.json`):
the JSON rebuilds the architecture and says what it was trained on — backbone
fingerprint (its text space), base and novel class names, prompt templates, metrics.
The bundled tiny-world detector lives in clipheads/tasks/vild/assets/."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from clipheads.core.head_folder import HeadFolder

from .config import DetectorModel, ViLDHeadConfig

FOLDER = HeadFolder("vild_detector", "clipheads-vild-detector", 1, "ViLD detector", "'clipheads vild train'")


@dataclass
class DetectorInfo:
    model: DetectorModel
    vild: ViLDHeadConfig
    backbone: str
    backbone_fingerprint: str
    embed_dim: int
    base: list[str]
    novel: list[str] = field(default_factory=list)
    templates: str = "vild63"
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def bundled_detector_dir() -> Path:
    return Path(str(resources.files("clipheads.tasks.vild") / "assets" / "vild_tiny"))


def save_detector(folder: Path, state: dict[str, torch.Tensor], info: DetectorInfo, half: bool = False) -> Path:
    return FOLDER.save_dataclass(folder, state, info, half=half)


def read_info(path: str | Path) -> DetectorInfo:
    return FOLDER.read_dataclass(DetectorInfo, path)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    return FOLDER.read_state(path)


def is_detector_folder(path: str | Path) -> bool:
    return FOLDER.exists(path)
