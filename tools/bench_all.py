"""Every benchmark in one report (JSON + a markdown table for docs/benchmarks.md).

Runs each `tools/bench_*.py` in its own process (so one benchmark's threads, allocator
and autocast state never leak into the next) at a size that fits the device: `small` on
a CPU (seconds to a minute each, tiny CLIP), `real` on a GPU (the paper-size backbones
with random weights). Each row is a ratio measured side by side in one process, with
the issue's goal next to it.

    python tools/bench_all.py --threads 2                       # CPU, small sizes
    python tools/bench_all.py --device cuda --precision bf16    # GPU, real sizes
    python tools/bench_all.py --threads 2 --write-docs          # also update docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench_all:begin -->", "<!-- bench_all:end -->"


@dataclass(frozen=True)
class Row:
    """One reported number: a JSON path in a benchmark's output, and its goal."""

    key: str                      # dotted path, e.g. "ratio_single_scale"
    measure: str                  # what a reader sees
    goal: float | None = None
    at_least: bool = True         # goal is a floor (ratios) or a ceiling (shares)


@dataclass(frozen=True)
class Bench:
    script: str
    small: list[str]
    real: list[str]
    rows: list[Row] = field(default_factory=list)


BENCHES: dict[str, Bench] = {
    "engine": Bench("bench_engine.py", ["--steps", "10", "--batch", "128"], ["--steps", "30", "--batch", "128"],
                    [Row("trainer_over_bare", "trainer steps/s ÷ bare loop (tiny CLIP, batch 128)", 0.95)]),
    "core": Bench("bench_core.py", ["--batch", "8", "--labels", "50", "--repeats", "3"],
                  ["--backbone", "ViT-B-16:random", "--batch", "64", "--labels", "1000"],
                  [Row("dense_embeddings_ratio", "dense_embeddings time ÷ encode_image", None, False),
                   Row("forward_intermediates_4_layers_ratio", "forward_intermediates (4 blocks) time ÷ encode_image",
                       None, False)]),
    "lseg": Bench("bench_lseg.py", ["--size", "192", "--labels", "21", "--single-only", "--repeats", "5"],
                  ["--config", "clip_vitb16_frozen", "--backbone", "ViT-B-16:random", "--size", "480",
                   "--labels", "150"],
                  [Row("ratio_single_scale", "LSeg single-scale ÷ bare forward_intermediates", 0.85),
                   Row("ratio_multi_scale", "LSeg multi-scale + flip ÷ bare forward_intermediates")]),
    "groupvit": Bench("bench_groupvit.py", ["--size", "224", "--skip-official", "--repeats", "5"],
                      ["--config", "clip_vitb16_head", "--backbone", "ViT-B-16:random", "--size", "448"],
                      [Row("ratio_head_to_backbone", "GroupViT grouping head ÷ bare forward_intermediates", 0.85)]),
    "vild": Bench("bench_vild.py", ["--proposals", "100", "--labels", "100", "--repeats", "3"],
                  ["--config", "lvis_r50"],
                  [Row("ratio_region_embeddings_to_bare_encode", "ViLD precompute regions/s ÷ bare encode_image",
                       0.9)]),
    "clip4clip": Bench("bench_clip4clip.py", ["--videos", "6", "--seconds", "12", "--video-size", "128",
                                               "--index-size", "2000", "--repeats", "3"],
                       ["--config", "msrvtt9k_vitb32_seqTransf", "--backbone", "ViT-B-32:random", "--videos", "64"],
                       [Row("ratio_index_to_bare_encode", "CLIP4Clip indexing (decode included) ÷ bare encode_image",
                            0.85)]),
    "clipasso": Bench("bench_clipasso.py", ["--seeds", "1,2", "--strokes", "16", "--repeats", "3", "--warmup", "1"],
                      ["--config", "paper", "--seeds", "1,3,8", "--strokes", "16,64"],
                      [Row("raster_fraction_at_config", "CLIPasso rasteriser share of one iteration", 0.15, False),
                       Row("projected_s_per_sketch", "CLIPasso seconds per sketch (config's iterations)")]),
}


def _get(data: dict, path: str):
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def run_one(name: str, bench: Bench, args: argparse.Namespace, size: str) -> dict:
    """One benchmark in a child process -> {"json": ..., "seconds": ...} or {"error": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, str(ROOT / "tools" / bench.script), *(bench.small if size == "small" else bench.real),
               "--device", args.device, "--precision", args.precision, "--out", str(out)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.cpu_count() or 1)}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"command": cmd[1:], "error": f"timed out after {args.timeout} s"}
        seconds = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"command": cmd[1:], "seconds": seconds, "error": " | ".join(tail) or f"exit {proc.returncode}"}
        return {"command": cmd[1:], "seconds": seconds, "json": json.loads(out.read_text())}


def table(report: dict) -> str:
    """The markdown table of every row: value, goal, met or not."""
    lines = [f"Machine: {report['machine']}; torch {report['torch']}; device {report['device_name']}; "
             f"precision {report['precision']}; threads {report['threads']}; sizes: {report['size']}.",
             "", "| measure | value | goal | met |", "|---|---|---|---|"]
    for name, bench in BENCHES.items():
        entry = report["results"].get(name)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"| {name} | failed: {entry['error'][:80]} | | |")
            continue
        for row in bench.rows:
            value = _get(entry["json"], row.key)
            if value is None:
                continue
            goal = "" if row.goal is None else (f"≥ {row.goal:g}" if row.at_least else f"≤ {row.goal:g}")
            met = "" if row.goal is None else ("yes" if (value >= row.goal if row.at_least else value <= row.goal)
                                               else "no")
            lines.append(f"| {row.measure} | {value:.3g} | {goal} | {met} |")
    return "\n".join(lines) + "\n"


def write_docs(markdown: str, docs: Path = DOCS) -> None:
    """Replace the block between the bench_all markers (appended once if missing)."""
    text = docs.read_text()
    block = f"{BEGIN}\n{markdown}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## All benchmarks (`tools/bench_all.py`)\n\n" + block + "\n"
    docs.write_text(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0, help="torch threads per benchmark (0 = all cores)")
    p.add_argument("--size", choices=("small", "real"), help="default: small on CPU, real on a GPU")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these benchmarks")
    p.add_argument("--timeout", type=int, default=900, help="seconds per benchmark")
    p.add_argument("--out", type=Path, help="JSON report (default: docs/bench/bench_all_<device>.json)")
    p.add_argument("--write-docs", action="store_true", help="put the table into docs/benchmarks.md")
    args = p.parse_args(argv)
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size or ("real" if args.device.startswith("cuda") else "small")
    report = {"machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "torch": torch.__version__, "device": args.device,
              "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "precision": args.precision, "threads": args.threads or os.cpu_count(), "size": size, "results": {}}
    for name in args.only or BENCHES:
        print(f"bench_all: {name} ...", file=sys.stderr, flush=True)
        report["results"][name] = run_one(name, BENCHES[name], args, size)
    report["table"] = table(report)
    out = args.out or ROOT / "docs" / "bench" / f"bench_all_{'gpu' if size == 'real' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.write_docs:
        write_docs(report["table"])
    print(report["table"])
    failed = [n for n, r in report["results"].items() if "error" in r]
    if failed:
        print(f"bench_all: failed: {', '.join(failed)} (see {out})", file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()["results"].values()) else 0)
