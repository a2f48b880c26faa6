"""Optimizer and learning-rate schedule built from a `TrainConfig`.

Per-group learning rates are expressed as `lr_mult` on each param-group dict (e.g. a
head at 10x the backbone, as LSeg and CLIP4Clip do). The multiplier is kept in the
optimizer's group so that it is visible, checkpointed, and survives a resume; the
schedule (warmup then cosine/poly/constant) is one factor shared by all groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from clipheads.core.errors import UserError

from ._fmt import short_list
from .config import TrainConfig

ParamGroupsFn = Callable[[nn.Module], list[dict]]


@dataclass(frozen=True)
class LrFactor:
    """Multiplier of the peak lr at a 0-based optimizer step (a picklable LambdaLR fn)."""

    steps: int
    warmup_steps: int
    schedule: str
    poly_power: float = 0.9
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # poly
            decay = (1.0 - progress) ** self.poly_power
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay


def lr_factor(cfg: TrainConfig) -> LrFactor:
    """The schedule of `cfg` as a callable step -> factor."""
    return LrFactor(cfg.steps, cfg.warmup_steps, cfg.schedule, cfg.poly_power, cfg.min_lr_ratio)


def split_decay(module: nn.Module, lr_mult: float = 1.0) -> list[dict]:
    """Two groups: weights with decay, and biases/norm/1-d params without (common practice).

    Usable directly as `param_groups=` or as a building block inside a head's own fn.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "lr_mult": lr_mult}]
    if no_decay:
        groups.append({"params": no_decay, "lr_mult": lr_mult, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def resolve_param_groups(module: nn.Module, param_groups: Optional[ParamGroupsFn]) -> list[dict]:
    """Groups for the optimizer, checked: every trainable parameter exactly once.

    A trainable parameter missing from all groups would silently never train, and one
    listed twice would be updated twice; both are configuration bugs, so they raise.
    """
    names = {id(p): n for n, p in module.named_parameters()}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    if not trainable:
        raise UserError(
            "the module given to Trainer has no trainable parameters; "
            "pass the head (not the frozen backbone) or call requires_grad_(True) on what should train"
        )
    if param_groups is None:
        groups = [{"params": [p for p in module.parameters() if p.requires_grad]}]
    else:
        groups = [dict(g) for g in param_groups(module)]
    seen: set[int] = set()
    for i, g in enumerate(groups):
        params = g.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        g["params"] = list(params) if params is not None else []
        for p in g["params"]:
            if id(p) not in names:
                raise UserError(
                    f"param_groups group {i} holds a parameter that is not part of the trained module; "
                    "only pass parameters of the module given to Trainer"
                )
            if not p.requires_grad:
                raise UserError(
                    f"param_groups group {i} holds frozen parameter {names[id(p)]!r}; "
                    "drop it from the group or call requires_grad_(True) on it"
                )
            if id(p) in seen:
                raise UserError(
                    f"parameter {names[id(p)]!r} is in more than one param group; list it once"
                )
            seen.add(id(p))
        mult = g.setdefault("lr_mult", 1.0)
        if not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult < 0:
            raise UserError(f"param_groups group {i} has lr_mult={mult!r}; it must be a number >= 0")
    missing = sorted(names[i] for i in trainable - seen)
    if missing:
        raise UserError(
            f"param_groups leaves trainable parameters out: {short_list(missing)}; "
            "add them to a group or freeze them with requires_grad_(False)"
        )
    return [g for g in groups if g["params"]]


def build_optimizer(
    groups: list[dict], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD over `groups`; each group's lr is `cfg.lr * lr_mult`."""
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
        g.setdefault("weight_decay", cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # the fused CUDA kernel is the fastest AdamW; the CPU default (foreach) is fine there
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
        weight_decay=cfg.weight_decay, fused=fused,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + decay as one LambdaLR factor applied to every group's `cfg.lr * lr_mult`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients, as a tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

