"""Two CPU processes (gloo) must train exactly like one process on the full batch."""
from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from clipheads.core.engine import TrainConfig, Trainer, contrastive_loss, seed_everything
from clipheads.core.engine import distributed as D


N, DIM_I, DIM_T = 16, 5, 7

CpuTrainer = functools.partial(Trainer, device="cpu")  # CPU tests, also on GPU machines


def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, DIM_I, generator=g), torch.randn(N, DIM_T, generator=g)


class Towers(nn.Module):
    """The trainable part: two projections and a learnable temperature."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.img = nn.Sequential(nn.Linear(DIM_I, 8), nn.Dropout(dropout))
        self.txt = nn.Linear(DIM_T, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, img, txt):
        return (nn.functional.normalize(self.img(img), dim=-1),
                nn.functional.normalize(self.txt(txt), dim=-1), self.logit_scale.exp())


class PairSet(Dataset):
    def __init__(self) -> None:
        self.img, self.txt = pairs()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return self.img[i], self.txt[i]


def frozen_backbone() -> nn.Module:
    torch.manual_seed(2)
    return nn.Linear(DIM_I, DIM_I).requires_grad_(False).eval()


def make_clip_loss(backbone: nn.Module):
    def loss_fn(model, batch):
        img, txt = batch
        fi, ft, scale = model(backbone(img), txt)
        return {"loss": contrastive_loss(fi, ft, scale)}

    return loss_fn


def mse_loss(model, batch):
    img, txt = batch
    fi, ft, scale = model(img, txt)
    return {"loss": ((fi - ft) ** 2).sum(-1).mean() + 0.01 * scale}


def run_trainers(out: Path, bs: int, dropout_run: bool, crash_at: int = 0) -> dict:
    """The trainer scenarios; identical code (and global batch `bs`) for 1 and 2 processes."""
    res = {}
    towers = Towers()
    c = TrainConfig(steps=3, batch_size=bs, optimizer="sgd", momentum=0.0, schedule="constant",
                    lr=0.5, log_every=1, seed=4)
    t = CpuTrainer(towers, make_clip_loss(frozen_backbone()), PairSet(), c, out / "clip", progress=False)
    res["wrapped"] = type(t.model).__name__, t.model.module is towers if hasattr(t.model, "module") else None
    res["clip_fit"] = t.fit().train_metrics["loss"]
    res["clip"] = {k: v.clone() for k, v in towers.state_dict().items()}

    towers = Towers()
    c = TrainConfig(steps=3, batch_size=bs, grad_accum=2, optimizer="sgd", momentum=0.0,
                    schedule="constant", lr=0.5, log_every=1, seed=4)
    CpuTrainer(towers, mse_loss, PairSet(), c, out / "accum", progress=False).fit()
    res["accum"] = {k: v.clone() for k, v in towers.state_dict().items()}
    if dropout_run:  # exact resume with per-rank dropout RNG
        c = TrainConfig(steps=6, batch_size=bs // 2, lr=0.05, ckpt_every=3, log_every=2, seed=4)
        seed_everything(10 + D.get_rank())
        ref = Towers(0.5)
        CpuTrainer(ref, mse_loss, PairSet(), c, out / "straight", progress=False).fit()
        calls = {"n": 0}

        def crashing(model, batch):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
            return mse_loss(model, batch)

        seed_everything(10 + D.get_rank())
        with pytest.raises(KeyboardInterrupt):
            CpuTrainer(Towers(0.5), crashing, PairSet(), c, out / "resumed", progress=False).fit()
        again = Towers(0.5)
        CpuTrainer(again, mse_loss, PairSet(), c, out / "resumed", progress=False).fit(resume=True)
        res["resume_equal"] = all(torch.equal(a, b) for a, b in
                                  zip(ref.state_dict().values(), again.state_dict().values()))
    return res


def contrastive_grads(rank: int, world: int) -> dict:
    """Loss and gradients of the contrastive loss on this rank's slice of the batch."""
    img, txt = pairs()
    lo, hi = rank * N // world, (rank + 1) * N // world
    towers = Towers()
    model = nn.parallel.DistributedDataParallel(towers) if world > 1 else towers
    fi, ft, scale = model(img[lo:hi], txt[lo:hi])
    loss = contrastive_loss(fi, ft, scale)
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in towers.named_parameters()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        torch.set_num_threads(1)
        info = D.init_distributed(device="cpu")
        res = {"info": (info.rank, info.world_size, info.is_main)}
        # all_gather_with_grad: full values, gradient only on the local slot
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        y = D.all_gather_with_grad(x)
        w = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape)
        (y * w).sum().backward()
        res["gathered"], res["gather_grad"] = y.detach(), x.grad.clone()
        res.update(contrastive_grads(rank, world))
        res.update(run_trainers(Path(out) / "ddp", bs=N // 2, dropout_run=True))  # global batch
        torch.save(res, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        D.cleanup()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_worker, args=(2, D.find_free_port(), str(out)), nprocs=2, join=True)
    except Exception as e:  # surface the child's traceback
        errs = "\n".join(p.read_text() for p in out.glob("rank*.err"))
        raise AssertionError(f"DDP workers failed: {e}\n{errs}") from e
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_all_gather_with_grad_keeps_only_local_gradient(ddp_results):
    _, res = ddp_results
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    w = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    for rank, r in enumerate(res):
        assert r["info"] == (rank, 2, rank == 0)
        assert torch.equal(r["gathered"], expected)
        assert torch.equal(r["gather_grad"], w[2 * rank: 2 * rank + 2])


def test_contrastive_loss_and_grads_match_single_process(ddp_results):
    _, res = ddp_results
    single = contrastive_grads(0, 1)
    for r in res:
        assert torch.allclose(r["loss"], single["loss"], atol=1e-6, rtol=0)
        for name, g in single["grads"].items():
            assert torch.allclose(r["grads"][name], g, atol=1e-6, rtol=0), name
    # without the world-size gradient correction the DDP average would be half: make sure
    # the comparison can fail
    assert not torch.allclose(res[0]["grads"]["img.0.weight"], single["grads"]["img.0.weight"] / 2, atol=1e-6)


def test_trainer_ddp_equals_single_process_full_batch(ddp_results, tmp_path):
    out, res = ddp_results
    single = run_trainers(tmp_path, bs=N // 2, dropout_run=False)
    assert single["wrapped"] == ("Towers", None)
    for r in res:
        assert r["wrapped"] == ("DistributedDataParallel", True)  # only the trainable module
        assert r["clip_fit"] == pytest.approx(single["clip_fit"], abs=1e-6)
        for key in ("clip", "accum"):
            for name, v in single[key].items():
                assert torch.allclose(r[key][name], v, atol=1e-6, rtol=0), (key, name)
        assert r["resume_equal"], "2-process resume is not exact"
    # rank 0 alone wrote metrics and checkpoints, once per step
    lines = (out / "ddp" / "clip" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    ck = torch.load(out / "ddp" / "resumed" / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
