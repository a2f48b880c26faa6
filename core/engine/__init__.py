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

from clipheads.core.lazy import lazy_exports

# name -> submodule; resolved on first use, so `from clipheads.core.engine import TrainConfig`
# (every task config does it) does not import torch.
_EXPORTS = {
    "CheckpointDir": "checkpoint", "atomic_save": "checkpoint", "load_checkpoint": "checkpoint",
    "TrainConfig": "config",
    "EpochLoader": "data", "ResumableSampler": "data", "move_to_device": "data",
    "DistInfo": "distributed", "all_gather_with_grad": "distributed", "barrier": "distributed",
    "cleanup": "distributed", "init_distributed": "distributed", "is_main_process": "distributed",
    "NonFiniteError": "guards",
    "contrastive_loss": "losses",
    "gather_for_global_loss": "losses",
    "split_decay": "optim",
    "seed_everything": "rng",
    "FitResult": "trainer", "Trainer": "trainer",
    "convert_sync_batchnorm": "sync_bn",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
