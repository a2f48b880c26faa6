"""Which device a process computes on, decided once, before any model is built.

`auto` (the default) is `cuda:LOCAL_RANK` when CUDA is available, else the CPU, so the
same command is right in one process, under `torchrun` on a GPU node, and on a laptop.
`cuda` under torchrun also means this rank's GPU; `cuda:N` is taken literally.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK; 0 when not launched by it)."""
    raw = os.environ.get("LOCAL_RANK", "")
    try:
        return int(raw) if raw.strip() else 0
    except ValueError as exc:
        raise UserError(f"environment variable LOCAL_RANK={raw!r} is not an integer; "
                        "launch with torchrun or unset it") from exc


def check_device_spec(spec: str) -> str:
    """Validate the spelling without importing torch (for the CLI's argument check)."""
    text = str(spec).strip().lower()
    if not _SPEC.match(text):
        raise UserError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    return text


def resolve_device(spec: str | None = "auto") -> "torch.device":
    """The torch.device for `spec` on this rank; a device that is not there is a UserError."""
    import torch

    if spec is None:
        spec = "auto"
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = check_device_spec(spec)
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if text == "auto":
        if not available:
            return torch.device("cpu")
        text = "cuda"
    if not available:
        raise UserError(f"--device {spec}: no CUDA device is available here (devices: cpu); "
                        "use --device cpu or auto")
    count = torch.cuda.device_count()
    index = local_rank() % count if text == "cuda" else int(text.split(":")[1])
    if index >= count:
        raise UserError(f"--device {spec}: this machine has {count} CUDA device(s) "
                        f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)
