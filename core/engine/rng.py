"""Capture, restore and isolate every RNG that affects training.

Exact resume needs the Python, NumPy and torch (CPU + the training GPU) generators
back where they were at the checkpoint. States are stored as plain ints/lists/tensors
so checkpoints load with `torch.load(weights_only=True)` (no pickle code execution).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, Optional

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run is reproducible from `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _cuda_index(device: Optional[torch.device]) -> Optional[int]:
    """The CUDA device whose generator matters, without creating a CUDA context.

    Only the training device is saved: touching every GPU from every rank would create
    a context (hundreds of MB) on each of them.
    """
    if device is not None and device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.current_device()
    return None


def capture_rng(device: Optional[torch.device] = None) -> dict[str, Any]:
    """The state of every generator that training uses, in a weights_only-loadable form.

    `device`: the training device (its CUDA generator is included when it is a GPU).
    """
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    idx = _cuda_index(device)
    return {
        "python": [version, list(keys), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(idx) if idx is not None else None,
    }


def restore_rng(state: dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Put every generator back to `state` (as returned by `capture_rng`)."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    idx = _cuda_index(device)
    if state.get("cuda") is not None and idx is not None:
        torch.cuda.set_rng_state(state["cuda"], idx)


@contextlib.contextmanager
def isolated_rng(device: Optional[torch.device] = None) -> Iterator[None]:
    """Run a block (evaluation, say) without moving the training RNG streams.

    Then how often a run evaluates never changes what it trains: `eval_every` stays a
    bookkeeping field that may differ between a checkpoint and its resume.
    """
    state = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(state, device)
