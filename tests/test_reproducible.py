"""The same command twice is the same run: two fresh `clip train` / `lseg train` runs on CPU
give bit-identical checkpoints (the initial weights come from train.seed)."""
from __future__ import annotations

import pytest
import torch

from clipheads.core.cli import main
from test_runtime_torchrun import CLIP, LSEG


@pytest.mark.parametrize("task,args,step", [("clip", CLIP, 4), ("lseg", LSEG, 3)])
def test_two_fresh_runs_are_bit_identical(task, args, step, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    for run in ("a", "b"):
        torch.manual_seed(1000 if run == "a" else 2000)  # whatever came before must not matter
        assert main([task, "train", "--out", str(tmp_path / run), *args, "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    for name in ("step_%08d.pt" % step, "best.pt"):
        a = torch.load(tmp_path / "a" / "checkpoints" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / "checkpoints" / name, weights_only=True)
        assert a["model"].keys() == b["model"].keys()
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), f"{name}: {key} differs"
