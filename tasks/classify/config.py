"""Config schema of the `classify` task (allowed values declared with `checked`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from clipheads.core.config import checked
from clipheads.core.task import TaskConfig

DATASETS = ("folder", "cifar10", "cifar100")


@dataclass
class ProbeConfig:
    """Linear probe as in the CLIP paper: L2-regularised logistic regression (L-BFGS) on
    frozen image features, C chosen on a validation split carved from train."""

    c_min_exp: float = -6.0
    c_max_exp: float = 6.0
    c_steps: int = checked(13, ge=1)
    val_fraction: float = checked(0.2, gt=0.0, lt=1.0)
    max_iter: int = checked(1000, ge=1)
    seed: int = checked(0, ge=0)


@dataclass
class ClassifyConfig(TaskConfig):
    data: str | None = None        # train/eval: ImageFolder root (train/, test/ or val/) or a CIFAR root
    dataset: str = checked("folder", choices=DATASETS)
    templates: str = "imagenet80"
    top_k: int = checked(5, ge=1)
    batch_size: int = checked(64, ge=1)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
