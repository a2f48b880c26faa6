"""A wheel installs `clipheads.core`/`clipheads.tasks`/`clipheads.configs` (nothing named
`core` or `tasks` at the top of site-packages) with the tiny-world assets and entry points."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_import(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("clipheads-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"clipheads", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in ("clipheads/core/assets/tiny_clip/open_clip_model.safetensors",
                   "clipheads/core/assets/tiny_clip/SHA256SUMS",
                   "clipheads/configs/clip/tiny_world.yaml",
                   "clipheads/core/text/templates.py"):
        assert needed in names
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(site), str(wheel)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr
    probe = ("import clipheads.core.backbone as b, clipheads.core.registry as r;"
             "print(b.__file__); print(sorted(r.TASKS.names()));"
             "print(b.FrozenCLIP.from_spec('tiny-world').embed_dim)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(site)), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(str(site))
    assert "classify" in lines[1] and "clip" in lines[1]
    assert lines[2] == "128"
