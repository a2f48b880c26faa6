"""The CLIP paper's linear probe: multinomial logistic regression with L2 penalty, fit by
L-BFGS on frozen features (what sklearn's LogisticRegression does), in torch so it runs on
the backbone's device without another dependency."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clipheads.core.atomic import atomic_path, atomic_write_text
from clipheads.core.errors import UserError

from .config import ProbeConfig


@dataclass
class LinearProbe:
    weight: torch.Tensor  # [K, D]
    bias: torch.Tensor  # [K]
    classes: list[str]
    c: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T.to(features.device) + self.bias.to(features.device)

    def save(self, folder: Path) -> None:
        with atomic_path(folder / "probe.safetensors") as tmp:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(tmp))
        atomic_write_text(folder / "probe.json", json.dumps({"classes": self.classes, "C": self.c}))

    @classmethod
    def load(cls, folder: Path) -> "LinearProbe":
        try:
            tensors = load_file(str(folder / "probe.safetensors"))
            meta = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
            probe = cls(tensors["weight"], tensors["bias"], list(meta["classes"]), float(meta["C"]))
        except Exception as exc:  # missing files, bad json, missing keys: one line either way
            what = f"missing key {exc}" if isinstance(exc, KeyError) else type(exc).__name__
            raise UserError(f"cannot read linear probe from {folder} ({what}); "
                            "pass the --out folder of 'clipheads classify train'") from exc
        if probe.weight.ndim != 2 or probe.weight.shape[0] != len(probe.classes):
            raise UserError(f"linear probe {folder} has {probe.weight.shape[0]} rows for "
                            f"{len(probe.classes)} classes; retrain it with 'clipheads classify train'")
        return probe


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float,
                 max_iter: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise C * sum(CE) + 0.5 * ||W||^2 (sklearn's objective), scaled by 1/(C*N)."""
    x = x.float()
    n, d = x.shape
    w = torch.zeros(num_classes, d, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(w, b, x, y) -> float:
    return float(((x.float() @ w.T + b).argmax(-1) == y).float().mean())


def train_probe(x: torch.Tensor, y: torch.Tensor, classes: list[str], cfg: ProbeConfig) -> tuple[LinearProbe, dict]:
    """Sweep C on a held-out part of train (log-spaced, then refined), refit on all of it."""
    if len(set(y.tolist())) < 2:
        raise UserError("the linear probe needs training images of at least two classes")
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = max(1, int(len(y) * cfg.val_fraction))
    val, fit = perm[:n_val], perm[n_val:]
    scores: dict[float, float] = {}

    def score(c: float) -> float:
        if c not in scores:
            w, b = fit_logistic(x[fit], y[fit], len(classes), c, cfg.max_iter)
            scores[c] = _accuracy(w, b, x[val], y[val])
        return scores[c]

    grid = torch.logspace(cfg.c_min_exp, cfg.c_max_exp, cfg.c_steps).tolist()
    best = max(grid, key=lambda c: (score(c), -abs(torch.log10(torch.tensor(c)).item())))
    for c in (best / 4, best / 2, best * 2, best * 4):
        score(c)
    best = max(scores, key=lambda c: (scores[c], -abs(torch.log10(torch.tensor(c)).item())))
    w, b = fit_logistic(x, y, len(classes), best, cfg.max_iter)
    return LinearProbe(w.cpu(), b.cpu(), classes, best), {"C": best, "val_top1": scores[best],
                                                          "val_images": int(n_val)}
