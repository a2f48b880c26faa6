"""Exact resume: a killed-and-resumed run ends bit-identical to a straight one."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from clipheads.core.engine import TrainConfig, Trainer, load_checkpoint, seed_everything
from clipheads.core.errors import UserError

HERE = Path(__file__).resolve().parent

CpuTrainer = functools.partial(Trainer, device="cpu")  # CPU tests, also on GPU machines


class NoisyPairs(Dataset):
    """Regression pairs with per-access noise from the global torch RNG (an 'augmentation')."""

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.05 * torch.randn(6), self.y[i]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def make_cfg(**kw) -> TrainConfig:
    base = dict(steps=14, batch_size=8, grad_accum=2, lr=1e-2, weight_decay=0.01, warmup_steps=3,
                schedule="cosine", clip_grad=1.0, ckpt_every=7, eval_every=7, log_every=1, seed=7)
    base.update(kw)
    base["warmup_steps"] = min(base["warmup_steps"], base["steps"])
    return TrainConfig(**base)


def mse(model, batch):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean()}


def noisy_eval(module):
    # consumes RNG on purpose: evaluation must not shift the training streams
    return {"score": float(torch.randn(()).item() + module[0].weight.sum())}


class Crash(RuntimeError):
    pass


def crashing(loss_fn, at_call: int, hard_kill: bool = False):
    calls = {"n": 0}

    def fn(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            if hard_kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Crash("simulated crash")
        return loss_fn(model, batch)

    return fn


def trainer(out: Path, model: nn.Module, loss_fn=mse, **cfg_kw) -> Trainer:
    return CpuTrainer(model, loss_fn, NoisyPairs(), make_cfg(**cfg_kw), out, eval_fn=noisy_eval,
                   best_metric="score", config_dict={"task": "toy", "width": 16}, progress=False)


def straight_run(out: Path, **cfg_kw) -> nn.Module:
    seed_everything(0)
    model = make_model(0)
    trainer(out, model, **cfg_kw).fit()
    return model


def assert_bit_identical(a: nn.Module, b: nn.Module) -> None:
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        assert torch.equal(pa, pb), f"{na} differs by {(pa - pb).abs().max().item()}"


def train_losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert len(steps) == len(set(steps)), "a step was logged twice after resume"
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_resume_after_crash_is_bit_identical(tmp_path, amp):
    ref = straight_run(tmp_path / "straight", amp=amp)

    out = tmp_path / "crashed"
    seed_everything(0)
    first = make_model(0)
    # step 10 (micro-batch 19) crashes: the step-7 checkpoint is mid-epoch (14 of 10/epoch batches)
    with pytest.raises(Crash):
        trainer(out, first, loss_fn=crashing(mse, at_call=19), amp=amp).fit()
    ckpt = load_checkpoint(out / "checkpoints" / "step_00000007.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (7, 1, 4)

    resumed_model = make_model(seed=99)  # different init: the checkpoint must overwrite it
    result = trainer(out, resumed_model, amp=amp).fit(resume=True)
    assert result.step == 14
    assert_bit_identical(ref, resumed_model)
    assert train_losses(out) == train_losses(tmp_path / "straight")


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    ref = straight_run(tmp_path / "straight")
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_engine_resume as t; "
            f"t._killed_child({str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (out / "checkpoints" / "last").read_text().strip() == "step_00000007.pt"

    resumed_model = make_model(seed=5)
    trainer(out, resumed_model).fit(resume=True)
    assert_bit_identical(ref, resumed_model)


def _killed_child(out: str) -> None:
    """Runs in a subprocess: trains and SIGKILLs itself during step 10."""
    seed_everything(0)
    trainer(Path(out), make_model(0), loss_fn=crashing(mse, at_call=19, hard_kill=True)).fit()


def test_evaluation_does_not_perturb_training(tmp_path):
    with_eval = straight_run(tmp_path / "a", eval_every=2)
    seed_everything(0)
    without = make_model(0)
    CpuTrainer(without, mse, NoisyPairs(), make_cfg(eval_every=0), tmp_path / "b", progress=False).fit()
    assert_bit_identical(with_eval, without)


def test_resume_without_kill_continues_to_more_steps_when_not_strict(tmp_path):
    out = tmp_path / "run"
    seed_everything(0)
    trainer(out, make_model(0), steps=7).fit()
    with pytest.raises(UserError, match=r"different config.*train\.steps: 7 -> 14"):
        trainer(out, make_model(0)).fit(resume=True)
    model = make_model(0)
    result = trainer(out, model).fit(resume=True, strict=False)
    assert result.step == 14


def test_resume_into_different_model_names_file_and_keys(tmp_path):
    out = tmp_path / "run"
    seed_everything(0)
    trainer(out, make_model(0), steps=2).fit()
    other = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1), nn.Tanh())
    other.add_module("extra", nn.Linear(1, 1))
    with pytest.raises(UserError) as err:
        trainer(out, other, steps=2).fit(resume=True)
    msg = str(err.value)
    assert "step_00000002.pt" in msg and "different model" in msg
    assert "shape mismatch: " in msg and "0.weight (16, 6) in checkpoint vs (32, 6) in model" in msg
    assert "missing keys (in model, not in checkpoint): extra.bias, extra.weight" in msg
    assert "\n" not in msg


def test_resume_with_changed_task_config_is_refused(tmp_path):
    out = tmp_path / "run"
    seed_everything(0)
    trainer(out, make_model(0), steps=2).fit()
    t = CpuTrainer(make_model(0), mse, NoisyPairs(), make_cfg(steps=2, log_every=5), out,
                config_dict={"task": "toy", "width": 32}, progress=False)
    with pytest.raises(UserError, match=r"config\.width: 16 -> 32"):
        t.fit(resume=True)


def test_fresh_start_refuses_out_dir_with_checkpoints(tmp_path):
    out = tmp_path / "run"
    trainer(out, make_model(0), steps=2).fit()
    with pytest.raises(UserError, match="already holds checkpoints"):
        trainer(out, make_model(0), steps=2).fit()


def test_resume_true_on_empty_dir_starts_fresh_and_bad_path_is_user_error(tmp_path):
    result = trainer(tmp_path / "new", make_model(0), steps=2).fit(resume=True)
    assert result.step == 2
    with pytest.raises(UserError, match="does not exist"):
        trainer(tmp_path / "x", make_model(0), steps=2).fit(resume=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        trainer(tmp_path / "y", make_model(0), steps=2).fit(resume=junk)


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, caplog):
    """A newest checkpoint cut short (e.g. a copy interrupted) is skipped with a warning and
    the run continues from the one before, ending bit-identical to a straight run."""
    ref = straight_run(tmp_path / "straight")
    out = tmp_path / "run"
    seed_everything(0)
    with pytest.raises(Crash):
        trainer(out, make_model(0), loss_fn=crashing(mse, at_call=19)).fit()  # crash in step 10
    ckdir = out / "checkpoints"
    newest = ckdir / "step_00000007.pt"
    assert sorted(ckdir.glob("step_*.pt")) == [newest]
    # a newer checkpoint that is damaged, and the pointer on it
    damaged = ckdir / "step_00000010.pt"
    damaged.write_bytes(newest.read_bytes()[:100])
    (ckdir / "last").write_text("step_00000010.pt\n")
    run_cfg = (out / "run_config.json").read_text()
    with caplog.at_level("WARNING"):
        resumed = make_model(seed=99)
        trainer(out, resumed).fit(resume=True)
    assert any("skipping checkpoint" in r.getMessage() and "step_00000010.pt" in r.getMessage()
               for r in caplog.records)
    assert_bit_identical(ref, resumed)
    assert (out / "run_config.json").read_text() == run_cfg


def test_resume_from_a_named_checkpoint(tmp_path):
    ref = straight_run(tmp_path / "straight")
    out = tmp_path / "run"
    trainer(out, make_model(0)).fit()
    first = out / "checkpoints" / "step_00000007.pt"
    assert first.is_file()
    again = make_model(seed=5)
    tr = trainer(out, again)
    tr.fit(resume=first)  # from step 7, not from the newest (14): trains steps 8..14 again
    assert_bit_identical(ref, again)


def test_refused_resume_leaves_the_run_folder_unchanged(tmp_path):
    out = tmp_path / "run"
    seed_everything(0)
    trainer(out, make_model(0), steps=2).fit()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    t = CpuTrainer(make_model(0), mse, NoisyPairs(), make_cfg(steps=2, log_every=5), out,
                   config_dict={"task": "toy", "width": 32}, progress=False)
    with pytest.raises(UserError):
        t.fit(resume=True)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
