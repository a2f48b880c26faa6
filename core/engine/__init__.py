"""The training engine shared by every task head (see DESIGN.md, "Engine")."""
from __future__ import annotations

from .checkpoint import CheckpointDir, atomic_save, load_checkpoint
from .config import TrainConfig
from .data import EpochLoader, ResumableSampler, move_to_device
from .distributed import (
    DistInfo,
    all_gather_with_grad,
    barrier,
    cleanup,
    init_distributed,
    is_main_process,
)
from .guards import NonFiniteError
from .losses import contrastive_loss
from .optim import split_decay
from .rng import seed_everything
from .trainer import FitResult, Trainer

__all__ = [
    "CheckpointDir",
    "DistInfo",
    "EpochLoader",
    "FitResult",
    "NonFiniteError",
    "ResumableSampler",
    "TrainConfig",
    "Trainer",
    "all_gather_with_grad",
    "atomic_save",
    "barrier",
    "cleanup",
    "contrastive_loss",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "move_to_device",
    "seed_everything",
    "split_decay",
]
