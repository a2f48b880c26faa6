"""A third-party task in its own installed distribution shows up and runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PLUGIN = textwrap.dedent('''
    import argparse
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
''')


def _install(site):
    (site / "echo_plugin").mkdir(parents=True)
    (site / "echo_plugin" / "__init__.py").write_text(PLUGIN)
    info = site / "echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clipheads.tasks]\necho = echo_plugin:EchoTask\n")
    (info / "RECORD").write_text("")


def _clipheads(site, *argv):
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "clipheads.core.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


def test_entry_point_task_is_listed_and_runs(tmp_path):
    site = tmp_path / "site"
    _install(site)
    listing = _clipheads(site, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)["tasks"]
    assert tasks["echo"]["origin"] == "plugin echo-plugin"
    assert tasks["classify"]["origin"] == "built-in"
    run = _clipheads(site, "echo", "infer", "--labels", "cat,dog", "--set", "shout=true", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"labels": ["CAT", "DOG"]}
    bad = _clipheads(site, "echo", "infer", "--labels", "cat", "--set", "shoutt=true")
    assert bad.returncode == 2 and "did you mean: shout" in bad.stderr


def test_broken_plugin_does_not_break_the_cli(tmp_path):
    site = tmp_path / "site"
    _install(site)
    (site / "echo_plugin" / "__init__.py").write_text("raise ImportError('boom')\n")
    listing = _clipheads(site, "list")
    assert listing.returncode == 0
    assert "echo" in listing.stdout and "FAILED TO LOAD" in listing.stdout
