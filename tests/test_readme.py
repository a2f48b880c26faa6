"""The README's Python snippet runs exactly as written (a fresh interpreter, offline)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs_as_written(tmp_path):
    m = re.search(r"<!-- ci:python -->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert m, "README.md has no <!-- ci:python --> block"
    script = tmp_path / "snippet.py"
    script.write_text(m.group(1), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", CLIPHEADS_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("(128, 128) {'background':")
    assert "'label': 'red circle'" in lines[1] or "'label': 'blue square'" in lines[1]
    assert "torch.Size([2, 128])" in lines[-1]
