"""Trainer overhead (JSON): the core Trainer vs a bare PyTorch loop on the same model,
data, optimiser and batch (the tiny CLIP's architecture, contrastive loss), as a ratio of
steps per second in the same process.

    python tools/bench_engine.py --steps 30 [--device cuda]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import open_clip
import torch
from torch.utils.data import TensorDataset

from clipheads.core.benchmark import add_precision_argument, emit, synchronize
from clipheads.core.precision import amp_mode, autocast
from clipheads.core.engine import TrainConfig, Trainer, contrastive_loss
from clipheads.tasks.clip.config import _tiny_model


def _model(device):
    cfg = _tiny_model()
    torch.manual_seed(0)
    m = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], output_dict=True)
    return m.to(device), cfg


def _loss(model, batch):
    images, tokens = batch
    out = model(images, tokens)
    return {"loss": contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = leave as is)")
    add_precision_argument(p)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = amp_mode(args.precision)
    _, cfg = _model("cpu")
    n = args.batch * (2 * args.steps + 2)
    size = cfg["vision_cfg"]["image_size"]
    data = TensorDataset(torch.randn(n, 3, size, size),
                         torch.randint(1, 49000, (n, cfg["text_cfg"]["context_length"])))

    model, _ = _model(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    it = iter(loader)

    def bare_steps(n: int) -> None:
        for _ in range(n):
            images, tokens = next(it)
            with autocast(device, args.precision):
                loss = _loss(model, (images.to(device), tokens.to(device)))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def bare_rate() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        bare_steps(args.steps)
        synchronize(device)
        return args.steps / (time.perf_counter() - t0)

    bare_steps(2)  # warm-up
    bare_before = bare_rate()

    def trainer_seconds(steps: int) -> float:
        model, _ = _model(device)
        tcfg = TrainConfig(steps=steps, batch_size=args.batch, lr=1e-3, weight_decay=0.1,
                           schedule="constant", log_every=10, ckpt_every=0, amp=amp)
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(model, _loss, data, tcfg, out, device=device, progress=False)
            t0 = time.perf_counter()
            trainer.fit()
            synchronize(device)
            return time.perf_counter() - t0

    # the difference of two runs removes fixed costs (first steps, final checkpoint write)
    fixed = trainer_seconds(2)
    engine = args.steps / max(trainer_seconds(args.steps + 2) - fixed, 1e-9)
    bare = (bare_before + bare_rate()) / 2  # measured before and after: drift in load cancels
    result = {"benchmark": "engine", "device": str(device), "precision": args.precision,
              "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
              "bare_loop_steps_per_s": bare, "trainer_steps_per_s": engine,
              "trainer_over_bare": engine / bare,
              "trainer_fixed_s": fixed,
              "note": "trainer steps/s from the difference of a 2-step and a (steps+2)-step run"}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
