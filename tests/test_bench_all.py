"""tools/bench_all.py: each benchmark runs in its own process and lands in one JSON
report and one markdown table (values and goals; no timing is asserted)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_all():
    spec = importlib.util.spec_from_file_location("bench_all", ROOT / "tools" / "bench_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def test_every_bench_script_is_in_the_report(bench_all):
    scripts = {p.name for p in (ROOT / "tools").glob("bench_*.py")} - {"bench_all.py", "bench_demo.py"}
    assert scripts == {b.script for b in bench_all.BENCHES.values()}


def test_report_table_and_docs_block(bench_all, tmp_path, monkeypatch):
    tiny = bench_all.Bench("bench_engine.py", ["--steps", "2", "--batch", "16"], [],
                           [bench_all.Row("trainer_over_bare", "trainer ÷ bare", 0.95)])
    broken = bench_all.Bench("bench_engine.py", ["--steps", "not-a-number"], [], [])
    monkeypatch.setattr(bench_all, "BENCHES", {"engine": tiny, "broken": broken})
    out = tmp_path / "report.json"
    report = bench_all.main(["--device", "cpu", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    engine = saved["results"]["engine"]["json"]
    assert engine["benchmark"] == "engine" and engine["precision"] == "fp32" and engine["steps"] == 2
    assert "error" in saved["results"]["broken"] and "invalid int value" in saved["results"]["broken"]["error"]
    value = engine["trainer_over_bare"]
    row = next(line for line in report["table"].splitlines() if line.startswith("| trainer ÷ bare"))
    assert row == f"| trainer ÷ bare | {value:.3g} | ≥ 0.95 | {'yes' if value >= 0.95 else 'no'} |"
    assert "| broken | failed:" in report["table"]

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nintro\n")
    bench_all.write_docs("| a |\n", docs)
    bench_all.write_docs("| b |\n", docs)         # replaced, not appended twice
    text = docs.read_text()
    assert text.count(bench_all.BEGIN) == 1 and "| b |" in text and "| a |" not in text and "intro" in text
