"""CUDA paths of the trainer (fp16 GradScaler, CUDA RNG in checkpoints); skipped without a GPU."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clipheads.core.engine import TrainConfig, Trainer, load_checkpoint, seed_everything

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 16, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.3), nn.Linear(64, 1))


def mse(m, batch):
    x, y = batch
    return {"loss": ((m(x).float() - y) ** 2).mean()}


def run(out, m, loss_fn=mse, amp="fp16"):
    cfg = TrainConfig(steps=10, batch_size=8, grad_accum=2, lr=1e-2, amp=amp, clip_grad=1.0,
                      ckpt_every=5, log_every=5, warmup_steps=2, seed=3)
    return Trainer(m, loss_fn, dataset(), cfg, out, device="cuda", progress=False)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_amp_resume_is_exact(tmp_path, amp):
    seed_everything(0)
    ref = model(0)
    run(tmp_path / "a", ref, amp=amp).fit()

    calls = {"n": 0}

    def crashing(m, batch):
        calls["n"] += 1
        if calls["n"] == 13:  # during step 7, after the step-5 checkpoint
            raise KeyboardInterrupt
        return mse(m, batch)

    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", model(0), crashing, amp=amp).fit()
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000005.pt")
    assert ck["rng"][0]["cuda"] is not None
    assert (ck["scaler"] is not None) == (amp == "fp16")
    again = model(1)
    run(tmp_path / "b", again, amp=amp).fit(resume=True)
    for (n, a), b in zip(ref.state_dict().items(), again.state_dict().values()):
        assert a.is_cuda and torch.equal(a, b), n
