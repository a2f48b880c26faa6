"""Checkpoint files: atomic writes, keep-last-K pruning, best.pt, the `last` pointer."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from clipheads.core.atomic import is_temp_name
from clipheads.core.engine import TrainConfig, Trainer, atomic_save, load_checkpoint
from clipheads.core.engine.checkpoint import CheckpointDir
from clipheads.core.errors import UserError
from torch import nn
from torch.utils.data import TensorDataset

CpuTrainer = functools.partial(Trainer, device="cpu")  # CPU tests, also on GPU machines


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return TensorDataset(x, x @ torch.ones(4, 1))


def mse(model, batch):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean()}


def make(out, eval_fn=None, best_metric=None, best_mode="max", **kw) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(**{"steps": 10, "batch_size": 4, "lr": 0.05, "log_every": 5, **kw})
    return CpuTrainer(nn.Linear(4, 1), mse, dataset(), cfg, out, eval_fn=eval_fn,
                   best_metric=best_metric, best_mode=best_mode, progress=False)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    make(out, steps=4, ckpt_every=2).fit()
    ckdir = out / "checkpoints"
    good = load_checkpoint(ckdir / "step_00000004.pt")

    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    trainer = make(out, steps=6, ckpt_every=2)
    with pytest.raises(UserError, match="No space left"):  # one line naming the file, not a traceback
        trainer.fit(resume=True, strict=False)
    monkeypatch.setattr(torch, "save", real_save)

    assert (ckdir / "last").read_text().strip() == "step_00000004.pt"
    assert not (ckdir / "step_00000006.pt").exists()
    assert not [p for p in ckdir.iterdir() if is_temp_name(p.name)], "temp file left behind"
    again = load_checkpoint(ckdir / "step_00000004.pt")
    assert again["step"] == good["step"] == 4
    assert torch.equal(again["model"]["weight"], good["model"]["weight"])
    # and the run can still be resumed from it
    assert make(out, steps=6, ckpt_every=2).fit(resume=True, strict=False).step == 6


def test_failed_overwrite_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    atomic_save({"a": torch.ones(3)}, path)
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(10)  # torn write, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_atomic_save_replaces_whole_file(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(3)}, path)
    atomic_save({"a": torch.zeros(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(5))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_keep_last_k_and_best_tracking(tmp_path):
    scores = iter([0.3, 0.9, 0.5, 0.7, 0.1])  # eval at steps 2,4,6,8,10: best at step 4

    def eval_fn(module):
        return {"acc": next(scores), "other": 1.0}

    out = tmp_path / "run"
    result = make(out, eval_fn=eval_fn, best_metric="acc", ckpt_every=2, eval_every=2, keep_last=2).fit()
    ckdir = out / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("step_*.pt")) == ["step_00000008.pt", "step_00000010.pt"]
    assert (ckdir / "last").read_text().strip() == "step_00000010.pt"
    best = load_checkpoint(ckdir / "best.pt")  # step-4 file was pruned; best.pt survives
    assert best["step"] == 4 and best["best"]["value"] == 0.9
    assert result.best_value == 0.9 and result.best_checkpoint == ckdir / "best.pt"
    assert result.last_checkpoint == ckdir / "step_00000010.pt"
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["acc"] for r in evals if r["kind"] == "eval"] == [0.3, 0.9, 0.5, 0.7, 0.1]


def test_best_mode_min_and_eval_between_checkpoints(tmp_path):
    scores = iter([5.0, 4.0, 6.0, 4.5])  # evals at 3, 6, 9 and 10; checkpoints at 5, 10

    out = tmp_path / "run"
    make(out, eval_fn=lambda m: {"loss": next(scores)}, best_metric="loss", best_mode="min",
         ckpt_every=5, eval_every=3, keep_last=None).fit()
    ckdir = out / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("step_*.pt")) == ["step_00000005.pt", "step_00000010.pt"]
    assert load_checkpoint(ckdir / "best.pt")["step"] == 6  # written directly, no step file at 6


def test_best_metric_missing_is_user_error(tmp_path):
    from clipheads.core.errors import UserError

    with pytest.raises(UserError, match=r"best_metric 'acc' is not among .*did you mean: acc1"):
        make(tmp_path / "r", eval_fn=lambda m: {"acc1": 1.0}, best_metric="acc", eval_every=2).fit()


def test_last_pointer_fallback_and_tmp_cleanup(tmp_path):
    ck = CheckpointDir(tmp_path, keep_last=None)
    for s in (1, 3, 2):
        atomic_save({"s": s}, ck.step_path(s))
    assert ck.last() == ck.step_path(3)  # no pointer: highest step
    (tmp_path / ".step_00000004.pt.123.tmp").write_bytes(b"partial")
    ck.clean_tmp()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000001.pt", "step_00000002.pt", "step_00000003.pt"]
