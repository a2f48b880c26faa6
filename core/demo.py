"""`clipheads demo`: every installed head with tiny-world weights, run on the bundled
example images, collected into one HTML gallery.

The demo must stay quick on a small, possibly busy machine. The tiny models are made of
thousands of small ops, and OpenMP threads that wait for a core another program holds
turn each op into a scheduler time slice (a 2-thread run on 2 cores next to one busy
process took ten times as long as a 1-thread run). So each head runs with as many torch
threads as there are idle cores right now (at most `MAX_THREADS`), and the caller's
setting is put back afterwards. Each head's own demo budget lives in its config.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import os
import sys
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .atomic import atomic_write_text
from .cli_args import check_writable_dir, ensure_writable_dir
from .config import list_configs, load_config, resolve_config_path
from .errors import UserError
from .registry import TASKS
from .task import Context, DemoItem, Task

log = logging.getLogger(__name__)

GALLERY_IMAGE_HEIGHT = 160  # px: every gallery image is shown this tall (legends are drawn to it)
MAX_THREADS = 4             # the tiny models gain nothing from more
SAMPLE_SECONDS = 0.15       # how long the idle cores are sampled before each head


@dataclasses.dataclass
class HeadRun:
    """One head's gallery section and what it cost."""

    name: str
    summary: str
    items: list[DemoItem]      # image paths relative to the gallery folder
    seconds: float
    threads: int


@dataclasses.dataclass
class DemoRun:
    """The written gallery and every head's wall time."""

    index: Path
    heads: list[HeadRun]
    seconds: float
    startup: float             # importing torch and open_clip, paid once before the first head

    def timings(self) -> dict[str, float]:
        return {h.name: round(h.seconds, 2) for h in self.heads}


# threads -----------------------------------------------------------------------------------
def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return set(range(os.cpu_count() or 1))


def _cgroup_cpu_limit() -> float | None:
    """A container's CPU quota in cores (cgroup v2 `cpu.max`), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cpu_ticks(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """(idle, total) clock ticks per CPU in `cpus` from /proc/stat; empty off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    ticks = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            ticks[int(name[3:])] = (v[3] + v[4], sum(v))
    return ticks


def idle_cores(window_s: float = SAMPLE_SECONDS) -> float:
    """How many of our CPUs other programs leave idle now: /proc/stat sampled while this
    process sleeps (Linux), else the CPU count minus the 1-minute load average."""
    cpus = usable_cpus()
    limit = _cgroup_cpu_limit() or float(len(cpus))
    before = _cpu_ticks(cpus)
    if not before:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows
            load = 0.0
        return max(0.0, min(limit, len(cpus) - load))
    time.sleep(window_s)
    after = _cpu_ticks(cpus)
    free = 0.0
    for cpu, (idle0, total0) in before.items():
        idle1, total1 = after.get(cpu, (idle0, total0))
        free += (idle1 - idle0) / (total1 - total0) if total1 > total0 else 1.0
    return min(limit, free)


def demo_threads(cap: int = MAX_THREADS) -> int:
    """Torch threads for the next head: the idle cores (one counts from 75% idle), 1..cap.
    Fewer threads than cores costs at most a factor of the core count; more threads than
    idle cores can cost ten times that."""
    return max(1, min(cap, int(idle_cores() + 0.25)))


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run a block with `n` intra-op torch threads; the caller's setting comes back after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def single_interop_thread() -> None:
    """One inter-op thread: the demo never runs ops concurrently, so a pool is only
    overhead. Torch allows this once per process and only before parallel work starts
    (it cannot be put back), so later calls are silently skipped."""
    import torch
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())


def _threads_for_head(threads: int | None) -> int:
    """An explicit count wins, then the user's OMP_NUM_THREADS, then the idle cores."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        return threads
    if os.environ.get("OMP_NUM_THREADS"):
        import torch
        return torch.get_num_threads()
    return demo_threads()


# heads -------------------------------------------------------------------------------------
def example_images() -> list[Path]:
    folder = Path(str(resources.files("clipheads.core") / "assets" / "examples"))
    images = sorted(folder.glob("*.png"))
    if not images:
        raise UserError(f"no bundled example images in {folder}; rebuild them with "
                        "'python tools/make_examples.py'")
    return images


def _task_for_demo(name: str, device: str, overrides: Sequence[str] = ()) -> Task:
    cls = TASKS.get(name)
    config = "tiny_world" if "tiny_world" in list_configs().get(name, []) else cls.default_config
    path = resolve_config_path(name, config) if config else None
    cfg = load_config(cls.Config, path, overrides)
    cfg.backbone, cfg.weights = "tiny-world", None
    return cls(cfg, Context(cfg, device=device))


def run_head(name: str, examples: list[Path], out: Path, device: str = "cpu",
             overrides: Sequence[str] = (), threads: int | None = None) -> HeadRun | None:
    """One head's demo into `out/<name>/` under its own thread count; None when it has none."""
    task = _task_for_demo(name, device, overrides)
    if type(task).demo is Task.demo:  # no demo: no folder, no idle-core sampling
        return None
    n = _threads_for_head(threads)
    folder = ensure_writable_dir(out / name)
    start = time.perf_counter()
    with torch_threads(n):
        items = task.demo(examples, folder)
    seconds = time.perf_counter() - start
    if not any(folder.iterdir()):
        folder.rmdir()
    if not items:
        return None
    rel = [dataclasses.replace(i, images=[str(Path(name) / p) for p in i.images]) for i in items]
    return HeadRun(name, type(task).summary, rel, seconds, n)


def _head_names(heads: Sequence[str] | None, overrides: Mapping[str, Sequence[str]]) -> list[str]:
    names = TASKS.names() if heads is None else [TASKS.get(h).name for h in heads]
    for head in overrides:
        TASKS.get(head)  # an unknown name fails with close matches
    return names


def load_libraries() -> float:
    """Import torch and open_clip up front (seconds), so that one-off cost is reported as
    start-up rather than charged to whichever head happens to run first."""
    start = time.perf_counter()
    import torch  # noqa: F401

    from .backbone import FrozenCLIP  # noqa: F401  (imports open_clip)
    return time.perf_counter() - start


# the page ----------------------------------------------------------------------------------
def _page(runs: list[HeadRun], seconds: float, startup: float) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>clipheads demo</title>",
             "<style>body{font-family:sans-serif;margin:2em;background:#fafafa}"
             ".grid{display:flex;flex-wrap:wrap;gap:14px}.cell{background:#fff;border:1px solid #ddd;"
             f"border-radius:6px;padding:8px;width:fit-content}}.cell img{{height:{GALLERY_IMAGE_HEIGHT}px;"
             "image-rendering:pixelated;margin-right:4px}.cell p{margin:2px 0;font-size:13px}"
             "h2{margin-top:1.6em}h2 small{font-weight:normal;color:#777}</style></head><body>",
             "<h1>clipheads demo</h1>",
             f"<p>Every installed head on the bundled tiny-world examples, with the bundled "
             f"tiny CLIP backbone ({seconds:.1f} s, of which {startup:.1f} s loading torch and "
             "open_clip).</p>"]
    for run in runs:
        cost = f"{run.seconds:.1f} s, {run.threads} thread{'s' if run.threads > 1 else ''}"
        parts.append(f"<h2>{html.escape(run.name)} <small>({cost})</small></h2>"
                     f"<p>{html.escape(run.summary)}</p><div class='grid'>")
        for it in run.items:
            imgs = "".join(f"<img src='{html.escape(src)}' alt=''>" for src in it.images)
            lines = "".join(f"<p>{html.escape(line)}</p>" for line in it.lines)
            parts.append(f"<div class='cell'><b>{html.escape(it.title)}</b><br>{imgs}{lines}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _run_heads(names: list[str], out: Path, device: str, overrides: Mapping[str, Sequence[str]],
               threads: int | None, progress: bool) -> tuple[float, list[HeadRun]]:
    """Start-up, then every head, under one progress bar on stderr (cleared when done; off
    when stderr is not a terminal). Returns the start-up seconds and the heads' runs."""
    from tqdm.auto import tqdm
    examples = example_images()
    runs = []
    with tqdm(total=len(names) + 1, desc="demo", unit="stage", leave=False, file=sys.stderr,
              disable=None if progress else True) as bar:
        bar.set_postfix_str("loading torch, open_clip")
        startup = load_libraries()
        single_interop_thread()
        bar.update()
        for name in names:
            bar.set_postfix_str(name)
            run = run_head(name, examples, out, device, overrides.get(name, ()), threads)
            if run is not None:
                runs.append(run)
                tqdm.write(f"demo: {name}: {len(run.items)} results ({run.seconds:.1f} s, "
                           f"{run.threads} thread{'s' if run.threads > 1 else ''})", file=sys.stdout)
            bar.update()
    return startup, runs


def build_gallery(out: Path, device: str = "cpu", *, heads: Sequence[str] | None = None,
                  overrides: Mapping[str, Sequence[str]] | None = None, threads: int | None = None,
                  progress: bool = True) -> DemoRun:
    """Run each head's demo (all installed heads, or `heads`) and write `out/index.html`.

    `overrides` are `--set`-style values per head (e.g. {"clipasso": ["demo.iterations=2"]});
    `threads` fixes the torch thread count instead of sampling the idle cores per head."""
    overrides = dict(overrides or {})
    names = _head_names(heads, overrides)
    check_writable_dir(out)  # created by the first head that writes
    start = time.perf_counter()
    startup, runs = _run_heads(names, out, device, overrides, threads, progress)
    if not runs:
        raise UserError("no installed head has a demo")
    index = out / "index.html"
    seconds = time.perf_counter() - start
    atomic_write_text(index, _page(runs, seconds, startup))
    print(f"demo: wrote {index} ({seconds:.1f} s, {startup:.1f} s of it loading torch and open_clip)")
    return DemoRun(index, runs, seconds, startup)


def run_demo(out: Path, device: str = "cpu", *, heads: Sequence[str] | None = None,
             overrides: Mapping[str, Sequence[str]] | None = None, threads: int | None = None,
             progress: bool = True) -> Path:
    """Write `out/index.html` plus each head's outputs under `out/<task>/` (see `build_gallery`)."""
    return build_gallery(out, device, heads=heads, overrides=overrides, threads=threads,
                         progress=progress).index
