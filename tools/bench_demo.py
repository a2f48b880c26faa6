"""`clipheads demo` benchmark (JSON): wall time per head, in this process, on an idle
machine or next to one competing CPU-bound process (`--busy`), which is how the demo is
checked to degrade gracefully on a busy laptop.

    python tools/bench_demo.py                      # threads chosen per head from the idle cores
    python tools/bench_demo.py --busy               # plus one busy-loop process for the whole run
    python tools/bench_demo.py --busy --threads 2   # a fixed thread count (what the demo used to do)
    python tools/bench_demo.py --set clipasso:demo.iterations=100 --set clipasso:demo.lr=0.5  # the old budget
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from clipheads.core.demo import DemoRun, build_gallery, usable_cpus
from clipheads.core.errors import UserError

BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def competing_process(on: bool) -> Iterator[int | None]:
    """One CPU-bound Python process for the whole block, killed afterwards; yields its pid."""
    if not on:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # running before the demo samples the idle cores
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows
        return None


def head_overrides(items: list[str]) -> dict[str, list[str]]:
    """`HEAD:KEY=VALUE` strings -> {head: ["KEY=VALUE", ...]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        head, sep, value = item.partition(":")
        if not sep or "=" not in value:
            raise UserError(f"--set {item!r}: expected HEAD:KEY=VALUE, e.g. clipasso:demo.iterations=100")
        out.setdefault(head, []).append(value)
    return out


def report(run: DemoRun, args: argparse.Namespace, before: list[float] | None) -> dict:
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "usable_cpus": len(usable_cpus()), "python": platform.python_version()},
        "torch": torch.__version__,
        "device": args.device,
        "thread_setting": args.threads or "auto (idle cores per head)",
        "overrides": args.set,
        "threads": {h.name: h.threads for h in run.heads},
        "heads": run.timings(),
        "startup_s": round(run.startup, 2),
        "total_s": round(run.seconds, 2),
        "busy": {"competing_processes": 1, "command": f"python -c '{BUSY_LOOP}'"} if args.busy else None,
        "load_avg_before": before,
        "load_avg_after": load_average(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", action="store_true", help="run one competing CPU-bound process meanwhile")
    parser.add_argument("--threads", type=int, help="torch threads for every head (default: idle cores)")
    parser.add_argument("--heads", nargs="+", help="only these heads (default: every installed head)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--set", action="append", default=[], metavar="HEAD:KEY=VALUE",
                        help="a config value of one head's demo (repeatable)")
    parser.add_argument("--out", type=Path, help="keep the gallery here (default: a temporary folder)")
    args = parser.parse_args()
    try:
        overrides = head_overrides(args.set)
        before = load_average()
        with contextlib.ExitStack() as stack:
            out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-demo-")))
            stack.enter_context(competing_process(args.busy))
            with contextlib.redirect_stdout(sys.stderr):  # the demo's own lines; stdout is the JSON
                run = build_gallery(out, args.device, heads=args.heads, overrides=overrides,
                                    threads=args.threads, progress=False)
    except UserError as exc:
        print(f"bench_demo: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report(run, args, before), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
