"""Timing helpers shared by the `tools/bench_*.py` scripts: median wall time per call
with the device synchronised, so GPU work is counted where it happens."""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int,
                   warmup: int = 1) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per call, images/s (one image per call) and peak memory while calling."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = median_seconds(fn, device, repeats, warmup)
    return {"seconds": round(sec, 5), "images_per_s": round(1.0 / sec, 3),
            "peak_mb": round(peak_memory_mb(device), 1)}
