"""The training engine shared by every task head (see DESIGN.md, "Engine").

    cfg = TrainConfig(steps=2000, batch_size=64, lr=1e-3, warmup_steps=100, amp="bf16",
                      ckpt_every=500, eval_every=500)
    head = MyHead(backbone.embed_dim)              # trainable; backbone stays outside
    def loss_fn(model, batch):                     # model: head (DDP-wrapped under torchrun)
        feats = backbone.encode_image(batch["pixels"])
        return {"loss": F.cross_entropy(model(feats), batch["label"])}
    trainer = Trainer(head, loss_fn, train_set, cfg, "runs/x", eval_fn=evaluate,
                      best_metric="top1", config_dict=task_cfg)
    result = trainer.fit(resume=True)              # continues runs/x if it has a checkpoint
"""
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
