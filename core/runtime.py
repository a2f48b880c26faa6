"""The training runtime every head shares (detectron2's `DefaultTrainer` idea, by composition).

A task declares what is specific to it (`build_model`, `train_data`, `loss`,
`param_groups`, `evaluate_module`, `final_metrics`, `export`, `install`); `run_training`
does the rest, the same way for every head and correctly under `torchrun`:

1. the device comes from LOCAL_RANK (`Context.device`) and the process group is joined
   before any model is built, so every rank builds on its own device;
2. the module is built from `train.seed` (the same weights on every rank and rerun) and
   its BatchNorm is synchronised across ranks (any backend);
3. the core `Trainer` trains (global batch, exact resume, evaluation and best tracking on
   rank 0, checkpoints written once);
4. after a barrier, rank 0 alone computes the final metrics, exports, saves the resolved
   config and installs; the other ranks wait and learn whether it worked.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_args import ensure_writable_dir
from .config import save_config
from .errors import UserError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from .task import Task

log = logging.getLogger("clipheads.runtime")


@dataclasses.dataclass
class TrainReport:
    """What a finished training run reports (filled on rank 0; other ranks get `is_main=False`)."""

    task: str
    out: Path
    steps: int
    world_size: int = 1
    is_main: bool = True
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    exported: Path | None = None
    installed: Path | None = None
    skipped: int = 0
    best_checkpoint: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "out": str(self.out), "steps": self.steps,
               "world_size": self.world_size, "skipped": self.skipped, **self.metrics}
        for key in ("exported", "installed", "best_checkpoint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = str(value)
        return out


def _overrides(task: "Task", method: str) -> bool:
    from .task import Task
    return getattr(type(task), method) is not getattr(Task, method)


def run_training(task: "Task", out: Path, *, resume: bool | str | Path = False, install: bool = False,
                 progress: bool = True) -> TrainReport:
    """Train `task`'s module into `out`; see the module docstring for who does what."""
    import torch

    from .engine import Trainer
    from .engine import distributed as D
    from .engine.rng import seed_everything
    from .engine.sync_bn import convert_sync_batchnorm

    task.check_training(install)
    if resume not in (True, False, None) and not Path(resume).is_file():
        raise UserError(f"--resume {resume}: no such checkpoint file; pass a step_*.pt or best.pt "
                        "of this run, or --resume alone for the newest one")
    cfg = getattr(task.cfg, "train", None)
    if cfg is None:
        raise UserError(f"task '{task.name}' has no 'train' section in its config")
    device = task.ctx.device
    if task.ctx.precision != "fp32":
        from .precision import amp_mode, check_precision
        check_precision(task.ctx.precision, device.type)
        if cfg.amp is not None and cfg.amp != task.ctx.precision:
            raise UserError(f"--precision {task.ctx.precision} and train.amp={cfg.amp} disagree; "
                            "give one of them")
        cfg.amp = amp_mode(task.ctx.precision)
    cfg.validate()
    dist = D.init_distributed(device="cpu" if device.type == "cpu" else "cuda")
    data = task.train_data()
    if dist.is_main:  # created only now that the config and the data have been checked
        ensure_writable_dir(out)
    seed_everything(cfg.seed)  # the same initial weights on every rank and in every rerun
    module = task.build_model()
    if dist.is_distributed:
        module = convert_sync_batchnorm(module, device)
    eval_fn = task.evaluate_module if _overrides(task, "evaluate_module") else None
    groups = task.param_groups if _overrides(task, "param_groups") else None
    trainer = Trainer(module, task.loss, data.dataset, cfg, out, collate_fn=data.collate_fn,
                      param_groups=groups, eval_fn=eval_fn,
                      best_metric=task.best_metric if eval_fn is not None else None,
                      best_mode=task.best_mode, config_dict=task.cfg, device=device, progress=progress,
                      ddp_kwargs=task.ddp_options())
    try:
        fit = trainer.fit(resume=resume)
    except RuntimeError as exc:
        if dist.is_distributed and _lost_peer(exc):
            raise UserError(f"rank {dist.rank} lost contact with another rank during training "
                            f"({first_line(exc)}); {resume_hint(out)}") from exc
        raise
    module = trainer.module.eval()
    report = TrainReport(task.name, out, trainer.step, dist.world_size, dist.is_main,
                         skipped=_skipped(data.dataset, trainer), best_checkpoint=fit.best_checkpoint)
    failure: str | None = None
    if dist.is_main:
        try:
            with torch.no_grad():
                report.metrics = task.final_metrics(module, fit.eval_metrics)
            report.exported = task.export(module, out, report)
            save_config(task.cfg, out / f"{task.name}_train_config.yaml", task.name)
            if install:
                if report.exported is None:
                    raise UserError(f"task '{task.name}' exported nothing to install")
                report.installed = task.install(report.exported)
        except BaseException as exc:  # tell the waiting ranks, then fail here too
            failure = f"{type(exc).__name__}: {exc}"
            D.all_gather_object(failure)
            raise
    outcome = D.all_gather_object(failure)[0]
    if outcome is not None:
        raise UserError(f"rank 0 failed after training ({outcome}); the checkpoints in {out} are "
                        "intact: fix the cause and rerun with --resume")
    return report


_PEER_FAILURE = ("connection reset", "connection closed", "broken pipe", "gloo", "nccl", "timed out")


def _lost_peer(exc: BaseException) -> bool:
    """A collective failed because another process died or hung (not a bug of this rank)."""
    import torch.distributed as dist
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(mark in text for mark in _PEER_FAILURE)


def resume_hint(out: Path) -> str:
    """Where a stopped run can continue from (the checkpoints are written atomically)."""
    from .engine.checkpoint import CheckpointDir
    last = CheckpointDir(Path(out) / "checkpoints", None).last()
    if last is None:
        return f"no checkpoint was written yet in {out}; rerun the command"
    return f"the last checkpoint {last} is intact: rerun the same command with --resume"


def _skipped(dataset: Any, trainer: Any) -> int:
    """Samples skipped as unreadable on this rank (streams count in the loader)."""
    loader_skips = getattr(trainer.data, "skipped", None)
    if loader_skips is not None:
        return int(loader_skips)
    return int(getattr(dataset, "skipped", 0) or 0)
