"""The optimisation loop: every seed's strokes in one batch, Adam, eval, best-so-far, early stop.

The official code runs one process per seed; here the seeds are the batch dimension of
one rasteriser call and one CLIP forward, so 3 seeds cost far less than 3 runs. The eval
loss (the clean pair, no augmentation, as in the official eval mode) is the clean entry
of the training forward, so evaluating costs nothing extra. Each seed keeps its own best
strokes; the run stops when no seed has improved by more than `min_delta` for
`patience` evals.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from clipheads.core.errors import UserError

from .config import OptimConfig
from .losses import LossTerms
from .raster import Rasteriser
from .strokes import Strokes

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, bool], LossTerms]


@dataclass
class OptimResult:
    """Best strokes per seed, their clean losses, and what happened on the way."""

    strokes: Strokes                 # [B, S, ...] best of each seed
    losses: torch.Tensor             # [B] best clean loss of each seed
    best_iteration: list[int]        # per seed
    iterations: int                  # optimisation steps taken
    stopped_early: bool
    history: list[dict] = field(default_factory=list)      # {"iteration", "loss": [B]} per eval
    frames: list[tuple[int, Strokes]] = field(default_factory=list)  # snapshots for the GIF

    @property
    def best_seed(self) -> int:
        return int(torch.argmin(self.losses))


def check_optim(cfg: OptimConfig) -> None:
    """Reject settings the loop cannot run with (one line each)."""
    if cfg.iterations < 0:
        raise UserError(f"optim.iterations must be >= 0, got {cfg.iterations}")
    if cfg.seeds < 1:
        raise UserError(f"optim.seeds must be >= 1, got {cfg.seeds}")
    if cfg.eval_every < 1 or cfg.patience < 1:
        raise UserError("optim.eval_every and optim.patience must be >= 1")
    if cfg.lr <= 0 or cfg.width_lr <= 0 or cfg.colour_lr <= 0:
        raise UserError("learning rates must be > 0")


class StrokeParams:
    """The optimised tensors; widths and colours are leaves only when they are optimised."""

    def __init__(self, init: Strokes, cfg: OptimConfig):
        self.cfg = cfg
        self.points = init.points.detach().clone().requires_grad_(True)
        self.widths = init.widths.detach().clone().requires_grad_(cfg.optimise_width)
        self.colours = init.colours.detach().clone().requires_grad_(cfg.optimise_colour)
        self.opacity = init.opacity.detach().clone()

    def strokes(self) -> Strokes:
        return Strokes(self.points, self.widths, self.colours, self.opacity)

    def optimiser(self) -> torch.optim.Adam:
        groups = [{"params": [self.points], "lr": self.cfg.lr}]
        if self.cfg.optimise_width:
            groups.append({"params": [self.widths], "lr": self.cfg.width_lr})
        if self.cfg.optimise_colour:
            groups.append({"params": [self.colours], "lr": self.cfg.colour_lr})
        return torch.optim.Adam(groups)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.widths.clamp_(min=self.cfg.min_width)
        self.colours.clamp_(0.0, 1.0)

    def snapshot(self) -> Strokes:
        return Strokes(*(t.detach().clone() for t in (self.points, self.widths, self.colours, self.opacity)))


def _take(best: Strokes, new: Strokes, mask: torch.Tensor) -> Strokes:
    """Per seed: `new` where mask, else `best`."""
    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = mask.view(-1, *([1] * (a.dim() - 1))).to(a.device)
        return torch.where(m, b, a)
    return Strokes(*(pick(a, b) for a, b in zip(
        (best.points, best.widths, best.colours, best.opacity),
        (new.points, new.widths, new.colours, new.opacity))))


def optimise(init: Strokes, rasteriser: Rasteriser, size: tuple[int, int], loss_fn: LossFn,
             cfg: OptimConfig, gif_every: int = 0, progress: bool = False) -> OptimResult:
    """Optimise `init` (one batch item per seed) against `loss_fn`; returns each seed's best."""
    check_optim(cfg)
    params = StrokeParams(init, cfg)
    opt = params.optimiser()
    height, width = size
    b = init.batch
    best = params.snapshot()
    best_loss = torch.full((b,), math.inf)
    best_iter = [0] * b
    history: list[dict] = []
    frames: list[tuple[int, Strokes]] = []
    stall, stopped, step = 0, False, 0

    def record(iteration: int, clean: torch.Tensor, current: Strokes) -> bool:
        nonlocal best, best_loss
        clean = torch.nan_to_num(clean.detach().cpu().float(), nan=math.inf)
        improved = clean < best_loss - cfg.min_delta
        if improved.any():
            best = _take(best, current, improved)
            best_loss = torch.where(improved, clean, best_loss)
            for i in torch.nonzero(improved).flatten().tolist():
                best_iter[i] = iteration
        history.append({"iteration": iteration, "loss": [round(float(v), 6) for v in clean]})
        return bool(improved.any())

    bar = tqdm(range(cfg.iterations), desc="clipasso", unit="it", disable=None if progress else True, leave=False)
    for step in bar:
        current = params.snapshot() if (step % cfg.eval_every == 0 or
                                        (gif_every and step % gif_every == 0)) else None
        if gif_every and step % gif_every == 0:
            frames.append((step, current))
        terms = loss_fn(rasteriser.render(params.strokes(), height, width, background=1.0), True)
        if not torch.isfinite(terms.total).all():
            log.warning("clipasso: non-finite loss at iteration %d; keeping the best strokes so far", step)
            stopped = True
            break
        if step % cfg.eval_every == 0:
            stall = 0 if record(step, terms.clean, current) else stall + 1
            bar.set_postfix(best=f"{float(best_loss.min()):.4f}")
            if stall >= cfg.patience:
                stopped = True
                break
        opt.zero_grad(set_to_none=True)
        terms.total.sum().backward()
        opt.step()
        params.clamp_()
    else:
        step = cfg.iterations
    bar.close()
    final = params.snapshot()
    with torch.no_grad():
        terms = loss_fn(rasteriser.render(final, height, width, background=1.0), False)
    record(step, terms.clean, final)
    if gif_every:
        frames.append((step, best))
    return OptimResult(best, best_loss, best_iter, step, stopped, history, frames)
