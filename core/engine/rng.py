"""Capture, restore and isolate every RNG that affects training.

Exact resume needs the Python, NumPy and torch (CPU + every CUDA device) generators
back where they were at the checkpoint. States are stored as plain ints/lists/tensors
so checkpoints load with `torch.load(weights_only=True)` (no pickle code execution).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run is reproducible from `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng() -> dict[str, Any]:
    """The current state of every generator, in a weights_only-loadable form."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put every generator back to `state` (as returned by `capture_rng`)."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], i)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block (evaluation, say) without moving the training RNG streams.

    Otherwise an eval at a checkpoint step would shift dropout masks afterwards, and a
    resumed run (which does not repeat that eval) would diverge from a straight one.
    """
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)
