"""Divergence detection: stop on the first NaN/Inf loss or gradient, naming the step.

Values are checked when a metrics window is flushed (every `log_every` steps and before
any checkpoint or evaluation), so detection costs no extra host sync and a diverged
model is never written to disk.
"""
from __future__ import annotations

import math
from typing import Optional

from clipheads.core.errors import UserError


class NonFiniteError(UserError):
    """Training produced a NaN/Inf loss or gradient."""

    def __init__(self, step: int, what: str, value: float, where: str = "") -> None:
        self.step, self.what, self.value = step, what, value
        super().__init__(
            f"training diverged: {what} is {value} at step {step}{where}; "
            "lower train.lr, set train.clip_grad, use amp bf16 instead of fp16, or check the data "
            "of that step (resume from the last checkpoint to retry)"
        )


def first_non_finite(rows: list[tuple[int, dict[str, float]]],
                     keys: tuple[str, ...] = ("loss", "grad_norm")) -> Optional[tuple[int, str, float]]:
    """(step, key, value) of the earliest non-finite value among `keys`, or None."""
    for step, row in rows:
        for k in keys:
            v = row.get(k)
            if v is not None and not math.isfinite(v):
                return step, k, v
    return None
