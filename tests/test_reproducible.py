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


class Crash(RuntimeError):
    """A simulated failure in the middle of a run."""


@pytest.mark.parametrize("workers", [0, 2])
def test_lseg_train_interrupted_mid_run_resumes_bit_identical(workers, tmp_path, monkeypatch, capsys):
    """`lseg train --resume` after a crash in step 3 ends where an uninterrupted run ends,
    with DataLoader workers too (augmentation draws are keyed by seed, epoch and index)."""
    from clipheads.tasks.lseg import LSegTask
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    args = ["lseg", "train", *LSEG, "--set", "train.steps=4", "--set", "train.ckpt_every=2",
            "--set", "train.eval_every=0", "--set", f"train.num_workers={workers}", "--device", "cpu", "--json"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    real, calls = LSegTask.loss, {"n": 0}

    def crashing(self, module, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash("simulated")
        return real(self, module, batch)

    monkeypatch.setattr(LSegTask, "loss", crashing)
    with pytest.raises(Crash):
        main([*args, "--out", str(tmp_path / "crashed")])
    monkeypatch.setattr(LSegTask, "loss", real)
    assert (tmp_path / "crashed" / "checkpoints" / "step_00000002.pt").is_file()
    assert main([*args, "--out", str(tmp_path / "crashed"), "--resume"]) == 0
    capsys.readouterr()
    a = torch.load(tmp_path / "straight" / "checkpoints" / "step_00000004.pt", weights_only=True)
    b = torch.load(tmp_path / "crashed" / "checkpoints" / "step_00000004.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
