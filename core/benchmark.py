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


def add_common_arguments(parser, task: str) -> None:
    """The options every head benchmark shares: config, backbone, device, repeats,
    threads, overrides and the JSON output file."""
    parser.add_argument("--config", default="tiny_world", help=f"bundled {task} config or YAML")
    parser.add_argument("--backbone", help="override the config's backbone (use ARCH:random offline)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = leave as is)")
    add_precision_argument(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="also write the JSON here")


def add_precision_argument(parser) -> None:
    from .precision import PRECISIONS
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="autocast precision of both sides of every ratio (fp16 needs CUDA)")


def enter_precision(args, device: torch.device) -> None:
    """Run the rest of this benchmark process under `--precision` (autocast), so both sides
    of every ratio are timed at the same precision."""
    from .precision import autocast
    autocast(device, getattr(args, "precision", "fp32")).__enter__()  # left by process exit


def add_compile_argument(parser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the head's modules (the backbone side stays eager); the first "
                             "call's cost is reported apart as compile_warmup_s")


def compile_modules(owner, names: list[str]) -> None:
    """Replace `owner.<name>` by its torch.compile'd module, for each name."""
    for name in names:
        setattr(owner, name, torch.compile(getattr(owner, name)))


def warmup_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one first call (compilation included when the modules were compiled)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return round(time.perf_counter() - t0, 3)


def setup(args, task: str, config_cls: type):
    """(device, config, FrozenCLIP) from the common options: thread count applied, the
    task's config loaded with the overrides, the backbone built on the device."""
    from clipheads.core.backbone import FrozenCLIP
    from clipheads.core.config import load_config, resolve_config_path
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    enter_precision(args, device)
    cfg = load_config(config_cls, resolve_config_path(task, args.config), args.overrides)
    return device, cfg, FrozenCLIP.from_spec(args.backbone or cfg.backbone, device=device)


def median_row(rows: list[dict]) -> dict:
    """The median (by seconds) of interleaved `measure` rows."""
    return sorted(rows, key=lambda r: r["seconds"])[len(rows) // 2]


def emit(result: dict, out: str | None) -> None:
    """Print the benchmark's JSON, and write it to `out` when given."""
    import json
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
