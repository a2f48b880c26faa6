"""Third-party heads in their own installed distributions show up and run; the two
examples of docs/plugins.md are taken from the page itself, so the docs cannot rot."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from clipheads.core.tinyworld import make_single

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def doc_block(marker: str) -> str:
    """The first ```python block after `<!-- plugin:MARKER -->` in docs/plugins.md."""
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(rf"<!-- plugin:{marker} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"docs/plugins.md has no plugin:{marker} block"
    return m.group(1)


def install(site: Path, dist: str, module: str, source: str, entry: str) -> None:
    """A real installed distribution: package + dist-info with an entry point."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[clipheads.tasks]\n{entry}\n")
    (info / "RECORD").write_text("")


def clipheads(site: Path, tmp: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", CLIPHEADS_CACHE=str(tmp / "cache"))
    return subprocess.run([sys.executable, "-m", "clipheads.core.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)


ECHO = '''
from dataclasses import dataclass
from clipheads.core.task import Task, TaskConfig
from clipheads.core.cli_args import add_label_arguments

@dataclass
class EchoConfig(TaskConfig):
    shout: bool = False

class EchoTask(Task):
    summary = "echoes labels (test plugin)"
    Config = EchoConfig
    actions = ("infer",)

    @classmethod
    def add_arguments(cls, action, parser):
        add_label_arguments(parser)

    def infer(self, labels):
        return {"labels": [l.upper() if self.cfg.shout else l for l in labels]}
'''


def test_entry_point_task_is_listed_and_runs(tmp_path):
    site = tmp_path / "site"
    install(site, "echo-plugin", "echo_plugin", ECHO, "echo = echo_plugin:EchoTask")
    listing = clipheads(site, tmp_path, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)["tasks"]
    assert tasks["echo"]["origin"] == "plugin echo-plugin"
    assert tasks["classify"]["origin"] == "built-in"
    run = clipheads(site, tmp_path, "echo", "infer", "--labels", "cat,dog", "--set", "shout=true", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"labels": ["CAT", "DOG"]}
    bad = clipheads(site, tmp_path, "echo", "infer", "--labels", "cat", "--set", "shoutt=true")
    assert bad.returncode == 2 and "did you mean: shout" in bad.stderr


def test_broken_plugin_does_not_break_the_cli(tmp_path):
    site = tmp_path / "site"
    install(site, "echo-plugin", "echo_plugin", "raise ImportError('boom')\n", "echo = echo_plugin:EchoTask")
    listing = clipheads(site, tmp_path, "list")
    assert listing.returncode == 0
    assert "echo" in listing.stdout and "FAILED TO LOAD" in listing.stdout


def test_documented_tagger_runs(tmp_path):
    site = tmp_path / "site"
    install(site, "my-tagger", "my_tagger", doc_block("tagger"), "tagger = my_tagger:Tagger")
    image = tmp_path / "red_circle.png"
    make_single(5, "red", "circle", 96).image.save(image)
    run = clipheads(site, tmp_path, "tagger", "infer", "--image", str(image), "--labels",
                    "red circle,blue square", "--set", "templates=single", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"image": str(image), "tags": ["red circle"]}


def test_documented_training_head_trains_resumes_and_predicts(tmp_path):
    site = tmp_path / "site"
    install(site, "my-probe", "my_probe", doc_block("probe"), "shapeprobe = my_probe:ShapeProbe")
    out = tmp_path / "run"
    short = ["--set", "train.steps=40", "--set", "per_class=12"]
    run = clipheads(site, tmp_path, "shapeprobe", "train", "--out", str(out), *short, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["steps"] == 40 and summary["accuracy"] >= 0.75, summary   # chance is 0.25
    assert (out / "probe" / "probe.safetensors").is_file() and (out / "checkpoints" / "best.pt").is_file()
    assert (out / "shapeprobe_train_config.yaml").is_file()
    again = clipheads(site, tmp_path, "shapeprobe", "train", "--out", str(out), *short, "--resume", "--json")
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["steps"] == 40
    image = tmp_path / "square.png"
    make_single(11, "red", "square", 96).image.save(image)
    pred = clipheads(site, tmp_path, "shapeprobe", "infer", "--image", str(image), "--probe",
                     str(out / "probe"), "--json")
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["shape"] == "square"
