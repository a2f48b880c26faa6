"""Numeric precision of a head's forward passes: `fp32` (exact, the default), `bf16` or
`fp16` by autocast, so every head gets the option without a line of its own: matmuls and
convolutions run in the low precision, reductions and softmaxes stay in fp32 (torch's
autocast lists), parameters and the text bank's embeddings stay fp32.

Torch-free at import (the CLI validates `--precision` before torch loads).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str, device_type: str | None = None) -> str:
    """The validated spelling; fp16 needs CUDA (CPU autocast in fp16 is slow and lossy)."""
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if text == "fp16" and device_type is not None and device_type != "cuda":
        raise UserError(f"--precision fp16 needs a CUDA device (this run is on {device_type}); "
                        "use bf16 on CPU, or fp32")
    return text


def amp_mode(precision: str) -> str | None:
    """The trainer's `train.amp` value for a precision (None = fp32)."""
    return None if check_precision(precision) == "fp32" else check_precision(precision)


def autocast(device: "torch.device", precision: str) -> contextlib.AbstractContextManager:
    """A context in which forward passes run at `precision` on `device` (fp32: no-op)."""
    text = check_precision(precision, device.type)
    if text == "fp32":
        return contextlib.nullcontext()
    import torch
    dtype = torch.bfloat16 if text == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def full_precision(device: "torch.device") -> contextlib.AbstractContextManager:
    """Leave any surrounding autocast: for values that are cached or compared exactly
    (text bank embeddings, metrics)."""
    import torch
    return torch.autocast(device_type=device.type, enabled=False)
