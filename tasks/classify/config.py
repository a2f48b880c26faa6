"""Config schema of the `classify` task."""
from __future__ import annotations

from dataclasses import dataclass, field

from clipheads.core.task import TaskConfig


@dataclass
class ProbeConfig:
    """Linear probe as in the CLIP paper: L2-regularised logistic regression (L-BFGS) on
    frozen image features, C chosen on a validation split carved from train."""

    c_min_exp: float = -6.0
    c_max_exp: float = 6.0
    c_steps: int = 13
    val_fraction: float = 0.2
    max_iter: int = 1000
    seed: int = 0


@dataclass
class ClassifyConfig(TaskConfig):
    data: str | None = None        # train/eval: ImageFolder root (train/, test/ or val/) or a CIFAR root
    dataset: str = "folder"        # folder | cifar10 | cifar100
    templates: str = "imagenet80"
    top_k: int = 5
    batch_size: int = 64
    probe: ProbeConfig = field(default_factory=ProbeConfig)
