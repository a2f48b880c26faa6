"""The one state-dict check: missing, unexpected and mis-shaped keys, said in one line.

Every loader (backbones, heads, converted checkpoints) calls it before a strict load,
so a wrong file always fails the same way: which keys, how many, and what it fits.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .errors import UserError


def state_dict_problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        show: int = 3) -> list[str]:
    """'N missing: a, b, c (+k more)' style parts; [] when `state` fits `own` exactly."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    return parts


def check_state_dict(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str,
                     what: str, hint: str = "") -> None:
    """UserError '<where> does not fit <what>: ...<hint>' unless the keys and shapes match."""
    parts = state_dict_problems(own, state)
    if parts:
        raise UserError(f"{where} does not fit {what}: {'; '.join(parts)}{hint}")


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str,
                           what: str, hint: str = "") -> None:
    """`check_state_dict`, then a strict load with each tensor cast to the module's dtype."""
    own = module.state_dict()
    check_state_dict(own, state, where, what, hint)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
