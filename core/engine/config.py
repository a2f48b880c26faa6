"""`TrainConfig`: the optimisation recipe every task head embeds in its own config.

One dataclass so that YAML configs, `--set train.lr=...` overrides and checkpoint
fingerprints all talk about the same fields. `validate()` turns a bad value into a
`UserError` naming the field before any compute is spent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional

from clipheads.core.errors import UserError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant")
AMP_MODES = (None, "bf16", "fp16")

# Fields that only change bookkeeping (how often we log/save, how data is loaded), not the
# optimisation trajectory. They may change between a checkpoint and its resume.
BOOKKEEPING_FIELDS = frozenset(
    {"eval_every", "ckpt_every", "keep_last", "num_workers", "log_every"}
)


@dataclass
class TrainConfig:
    """Optimisation recipe. `batch_size` is the global batch of one optimizer step: each
    of N processes loads `batch_size / (N * grad_accum)` samples per micro-batch (an error
    when not divisible), so a paper config means the same on 1 or 8 GPUs; `steps` counts
    optimizer steps."""

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adamw only
    eps: float = 1e-8  # adamw only
    schedule: str = "cosine"
    poly_power: float = 0.9
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor of cosine/poly, as a fraction of the peak lr
    clip_grad: Optional[float] = None  # max global L2 norm, None = no clipping
    amp: Optional[str] = None  # None | "bf16" | "fp16" (fp16 needs CUDA)
    eval_every: int = 0  # optimizer steps between evaluations, 0 = only at the end
    ckpt_every: int = 0  # optimizer steps between checkpoints, 0 = only at the end
    keep_last: Optional[int] = 3  # step checkpoints kept on disk, None = keep all
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    log_every: int = 10  # also how often the loss is checked for NaN/Inf (one sync)

    def validate(self) -> "TrainConfig":
        """Raise `UserError` on the first invalid field; return self for chaining."""

        def bad(name: str, value: Any, need: str) -> UserError:
            return UserError(
                f"TrainConfig.{name}={value!r} is invalid: it must be {need}; "
                f"fix it in the config file or with --set train.{name}=..."
            )

        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, v, "an integer >= 1")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "num_workers", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(name, v, "an integer >= 0")
        if self.warmup_steps > self.steps:
            raise bad("warmup_steps", self.warmup_steps, f"<= steps ({self.steps})")
        if not _finite(self.lr) or self.lr <= 0:
            raise bad("lr", self.lr, "a number > 0")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", self.weight_decay, "a number >= 0")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", self.momentum, "in [0, 1)")
        if len(tuple(self.betas)) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.betas):
            raise bad("betas", self.betas, "two numbers in [0, 1)")
        if not _finite(self.eps) or self.eps <= 0:
            raise bad("eps", self.eps, "a number > 0")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        if not _finite(self.poly_power) or self.poly_power <= 0:
            raise bad("poly_power", self.poly_power, "a number > 0")
        if not _finite(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        if self.clip_grad is not None and (not _finite(self.clip_grad) or self.clip_grad <= 0):
            raise bad("clip_grad", self.clip_grad, "null or a number > 0")
        if self.amp not in AMP_MODES:
            raise bad("amp", self.amp, "null, 'bf16' or 'fp16'")
        if self.keep_last is not None and (
            not isinstance(self.keep_last, int) or isinstance(self.keep_last, bool) or self.keep_last < 1
        ):
            raise bad("keep_last", self.keep_last, "null (keep all) or an integer >= 1")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        return self

    def trajectory_dict(self) -> dict[str, Any]:
        """The fields that decide the optimisation trajectory (compared on resume)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if f.name not in BOOKKEEPING_FIELDS
        }

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-friendly values (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


__all__ = ["TrainConfig", "BOOKKEEPING_FIELDS", "OPTIMIZERS", "SCHEDULES", "AMP_MODES"]
