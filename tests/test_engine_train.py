"""Trainer mechanics: divergence stop, accumulation, lr groups, schedules, metrics, validation."""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clipheads.core.engine import EpochLoader, NonFiniteError, TrainConfig, Trainer, split_decay
from clipheads.core.engine.optim import LrFactor
from clipheads.core.errors import UserError

CpuTrainer = functools.partial(Trainer, device="cpu")  # CPU tests, also on GPU machines


def dataset(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.arange(1.0, 5.0).unsqueeze(1))


def mse(model, batch):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean()}


def two_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 4, "lr": 0.05, "log_every": 5, **kw})


def records(out, kind="train"):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


# ---------------------------------------------------------------- divergence
def test_nan_loss_stops_with_error_naming_the_step(tmp_path):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        out = mse(model, batch)
        if calls["n"] == 7:
            out["loss"] = out["loss"] * float("nan")
        return out

    t = CpuTrainer(two_layer(), loss_fn, dataset(), cfg(steps=20, ckpt_every=8, log_every=5), tmp_path,
                progress=False)
    with pytest.raises(NonFiniteError) as err:
        t.fit()
    msg = str(err.value)
    assert "loss is nan at step 7" in msg and "\n" not in msg
    assert err.value.step == 7 and isinstance(err.value, UserError)
    assert t.step == 8  # caught at the flush before the step-8 checkpoint ...
    assert not (tmp_path / "checkpoints" / "step_00000008.pt").exists()  # ... which is never written


def test_inf_gradient_is_detected(tmp_path):
    model = two_layer()
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        out = mse(m, batch)
        if calls["n"] == 3:
            model[0].weight.register_hook(lambda g: g * float("inf"))
        return out

    with pytest.raises(NonFiniteError, match=r"grad_norm is (inf|nan) at step 3"):
        CpuTrainer(model, loss_fn, dataset(), cfg(log_every=2), tmp_path, progress=False).fit()


# ---------------------------------------------------------------- accumulation / lr groups
def test_grad_accumulation_matches_full_batch(tmp_path):
    results = {}
    for name, bs, accum in (("full", 8, 1), ("accum", 8, 2)):  # batch_size is the global batch
        model = two_layer()
        c = cfg(steps=5, batch_size=bs, grad_accum=accum, optimizer="sgd", momentum=0.0,
                schedule="constant", lr=0.02)
        CpuTrainer(model, mse, dataset(), c, tmp_path / name, progress=False).fit()
        results[name] = (model, records(tmp_path / name))
    for (n, a), (_, b) in zip(results["full"][0].state_dict().items(), results["accum"][0].state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), n
    assert results["full"][1][-1]["loss"] == pytest.approx(results["accum"][1][-1]["loss"], rel=1e-5)
    # and the test can fail: a different batch really changes the result
    assert not torch.allclose(results["full"][0][0].weight, two_layer()[0].weight)


def test_per_group_lr_multipliers_reach_the_optimizer(tmp_path):
    model = two_layer()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[1].parameters(), "lr_mult": 10.0}]
    c = cfg(steps=6, warmup_steps=2, schedule="cosine", lr=0.01)
    t = CpuTrainer(model, mse, dataset(), c, tmp_path, param_groups=groups, progress=False)
    g0, g1 = t.optimizer.param_groups
    assert (g0["lr_mult"], g1["lr_mult"]) == (1.0, 10.0)
    assert g0["lr"] == pytest.approx(0.01 * 0.5) and g1["lr"] == pytest.approx(0.1 * 0.5)  # warmup 1/2
    t.fit()
    rec = records(tmp_path)[0]  # step 5
    factor = LrFactor(6, 2, "cosine")(4)
    assert rec["lr_group0"] == pytest.approx(0.01 * factor) and rec["lr_group1"] == pytest.approx(0.1 * factor)


def test_zero_lr_mult_freezes_a_group(tmp_path):
    model = two_layer()
    before = model[0].weight.detach().clone()
    groups = lambda m: [{"params": m[0].parameters(), "lr_mult": 0.0}, {"params": m[1].parameters()}]
    CpuTrainer(model, mse, dataset(), cfg(), tmp_path, param_groups=groups, progress=False).fit()
    assert torch.equal(model[0].weight, before)
    assert not torch.equal(model[1].weight, two_layer()[1].weight)


def test_param_group_mistakes_are_user_errors(tmp_path):
    model = two_layer()
    with pytest.raises(UserError, match=r"leaves trainable parameters out: 1\.bias, 1\.weight"):
        CpuTrainer(model, mse, dataset(), cfg(), tmp_path, param_groups=lambda m: [{"params": m[0].parameters()}])
    with pytest.raises(UserError, match="more than one param group"):
        CpuTrainer(model, mse, dataset(), cfg(), tmp_path,
                param_groups=lambda m: [{"params": m.parameters()}, {"params": m[1].parameters()}])
    frozen = two_layer().requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        CpuTrainer(frozen, mse, dataset(), cfg(), tmp_path)
    groups = split_decay(model)
    assert [len(g["params"]) for g in groups] == [2, 2] and groups[1]["weight_decay"] == 0.0


# ---------------------------------------------------------------- schedules
def test_schedules():
    cos = LrFactor(steps=10, warmup_steps=2, schedule="cosine")
    assert [cos(0), cos(1)] == [0.5, 1.0]
    assert cos(2) == 1.0 and cos(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 8)))
    assert cos(10) == pytest.approx(0.0, abs=1e-12)
    poly = LrFactor(steps=10, warmup_steps=0, schedule="poly", poly_power=0.9, min_lr_ratio=0.1)
    assert poly(0) == 1.0 and poly(5) == pytest.approx(0.1 + 0.9 * 0.5 ** 0.9)
    assert LrFactor(10, 0, "constant")(9) == 1.0


# ---------------------------------------------------------------- metrics / cost
def test_metrics_jsonl_has_loss_outputs_lr_and_throughput(tmp_path):
    def loss_fn(model, batch):
        out = mse(model, batch)
        out["mae"] = (model(batch[0]) - batch[1]).abs().mean()
        return out

    CpuTrainer(two_layer(), loss_fn, dataset(), cfg(steps=10, log_every=5), tmp_path, progress=False).fit()
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [5, 10]
    for key in ("loss", "mae", "grad_norm", "lr", "samples_per_s", "epoch"):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in recs), key
    assert recs[-1]["epoch"] == pytest.approx(10 * 4 / 32)
    assert recs[1]["loss"] < recs[0]["loss"]
    assert json.loads((tmp_path / "run_config.json").read_text())["train"]["steps"] == 10


def test_no_host_sync_per_step(tmp_path, monkeypatch):
    """Values stay on the device between flushes: only one sync per `log_every` window."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, **k):
            counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    c = cfg(steps=40, log_every=20, optimizer="sgd", momentum=0.9, clip_grad=1.0)
    # one epoch (CPU-side data order: 2 calls) + two flushes (1 each)
    CpuTrainer(two_layer(), mse, dataset(256), c, tmp_path, progress=False).fit()
    assert counts["n"] <= 4, f"{counts['n']} host syncs for 40 steps"


# ---------------------------------------------------------------- amp / validation
def test_bf16_autocast_on_cpu(tmp_path):
    seen = []

    def loss_fn(model, batch):
        pred = model(batch[0])
        seen.append(pred.dtype)
        return {"loss": ((pred.float() - batch[1]) ** 2).mean()}

    r = CpuTrainer(two_layer(), loss_fn, dataset(), cfg(amp="bf16"), tmp_path, progress=False).fit()
    assert set(seen) == {torch.bfloat16} and math.isfinite(r.train_metrics["loss"])


@pytest.mark.parametrize("field,value,needle", [
    ("lr", -1.0, "TrainConfig.lr=-1.0"),
    ("optimizer", "adam", "TrainConfig.optimizer='adam'"),
    ("schedule", "linear", "one of cosine, poly, constant"),
    ("warmup_steps", 2000, "<= steps"),
    ("amp", "fp8", "TrainConfig.amp"),
    ("keep_last", 0, "TrainConfig.keep_last"),
    ("grad_accum", 0, "TrainConfig.grad_accum"),
])
def test_config_validation(field, value, needle):
    with pytest.raises(UserError, match=None) as err:
        TrainConfig(**{field: value}).validate()
    assert needle in str(err.value) and f"--set train.{field}=" in str(err.value)


def test_user_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="amp='fp16' needs a CUDA device"):
        CpuTrainer(two_layer(), mse, dataset(), cfg(amp="fp16"), tmp_path)
    with pytest.raises(UserError, match="fewer than one batch"):
        CpuTrainer(two_layer(), mse, dataset(3), cfg(), tmp_path)
    with pytest.raises(UserError, match="must return a dict with key 'loss'"):
        CpuTrainer(two_layer(), lambda m, b: mse(m, b)["loss"], dataset(), cfg(), tmp_path / "a").fit()

    def no_grad_loss(m, b):
        with torch.no_grad():
            return mse(m, b)

    with pytest.raises(UserError, match="does not require grad"):
        CpuTrainer(two_layer(), no_grad_loss, dataset(), cfg(), tmp_path / "b").fit()


def test_epoch_loader_seek_equals_continuing():
    kw = dict(seed=3, shuffle=True, num_workers=0)
    a = EpochLoader(dataset(), 4, **kw)
    stream = [a.next()[0] for _ in range(20)]  # 8 batches/epoch: crosses two epoch ends
    b = EpochLoader(dataset(), 4, **kw)
    b.seek(1, 3)  # = batch 11 of the stream
    assert b.position == (1, 3)
    for ref in stream[11:]:
        assert torch.equal(b.next()[0], ref)
    assert not torch.equal(stream[0], stream[8])  # epochs are shuffled differently
