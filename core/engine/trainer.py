"""`Trainer`: the one training loop shared by every task head.

It owns the DataLoader (so the data position is exact), the optimizer/schedule, AMP,
gradient accumulation and clipping, DDP around the trainable module only, metrics,
evaluation with best-checkpoint tracking, and exact resume. A head supplies the
trainable module, a loss function and a dataset; everything else is configuration.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from clipheads.core.errors import UserError, close_matches, first_line

from . import distributed as D
from clipheads.core.atomic import atomic_write_text
from clipheads.core.precision import autocast

from .checkpoint import FORMAT, FORMAT_VERSION, CheckpointDir, load_checkpoint
from .config import TrainConfig
from .data import make_loader, move_to_device, per_rank_batch
from .fingerprint import check_fingerprint, flatten_config, make_fingerprint
from .guards import NonFiniteError, first_non_finite
from .metrics import MetricsLogger, StepWindow, mean_rows
from .optim import ParamGroupsFn, build_optimizer, build_scheduler, grad_norm, lr_factor, resolve_param_groups
from .rng import capture_rng, isolated_rng, restore_rng, seed_everything

log = logging.getLogger("clipheads.engine")

LossFn = Callable[[nn.Module, Any], Mapping[str, Any]]
EvalFn = Callable[[nn.Module], Mapping[str, Any]]


@dataclass
class FitResult:
    """What `Trainer.fit` ends with (on non-main ranks paths are None)."""

    step: int
    last_checkpoint: Optional[Path]
    best_checkpoint: Optional[Path]
    best_value: Optional[float]
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Train `module` with `loss_fn` on `dataset` following `cfg`; files go to `out_dir`.

    - `loss_fn(model, batch) -> {"loss": scalar, ...}`; `model` is the DDP wrapper when
      distributed (call it, not its submodules, so gradients sync); extra scalar entries
      are averaged and logged. The batch is already on `trainer.device`.
    - `param_groups(module) -> [{"params": [...], "lr_mult": 10.0, ...}, ...]`; each group
      trains at `cfg.lr * lr_mult` under the shared schedule.
    - `eval_fn(module) -> {name: float}` runs every `cfg.eval_every` steps and at the end,
      on the unwrapped module in eval mode under `torch.no_grad()`, without disturbing the
      training RNG; `best_metric`/`best_mode` pick `best.pt`.
    - `config_dict`: the task's resolved config, saved to `run_config.json` and compared
      on resume.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_fn: LossFn,
        dataset: Dataset,
        cfg: TrainConfig,
        out_dir: Union[str, Path],
        *,
        collate_fn: Optional[Callable[[list], Any]] = None,
        param_groups: Optional[ParamGroupsFn] = None,
        eval_fn: Optional[EvalFn] = None,
        best_metric: Optional[str] = None,
        best_mode: str = "max",
        config_dict: Optional[Any] = None,
        device: Optional[Union[str, torch.device]] = None,
        ddp_kwargs: Optional[dict[str, Any]] = None,
        eval_on_all_ranks: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg.validate()
        if best_mode not in ("max", "min"):
            raise UserError(f"best_mode={best_mode!r} is invalid; use 'max' or 'min'")
        if best_metric is not None and eval_fn is None:
            raise UserError(f"best_metric={best_metric!r} needs an eval_fn that reports it")
        wants_cpu = device is not None and torch.device(device).type == "cpu"
        self.dist = D.init_distributed(device="cpu" if wants_cpu else None)
        self.device = torch.device(device) if device is not None else self.dist.device
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise UserError(
                f"TrainConfig.amp='fp16' needs a CUDA device (training on {self.device}); "
                "use --set train.amp=bf16 on CPU or train.amp=null"
            )
        self.out_dir = Path(out_dir)
        self.loss_fn, self.eval_fn = loss_fn, eval_fn
        self.best_metric, self.best_mode = best_metric, best_mode
        self.eval_on_all_ranks = eval_on_all_ranks
        self.progress = progress
        self.config_dict = config_dict

        self.module = module.to(self.device)
        groups = resolve_param_groups(self.module, param_groups)
        self._params = [p for g in groups for p in g["params"]]
        self.model = D.wrap_ddp(self.module, dataclasses.replace(self.dist, device=self.device),
                                **(ddp_kwargs or {}))
        self.optimizer = build_optimizer(groups, cfg, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self._factor = lr_factor(cfg)
        self.scaler = _grad_scaler() if cfg.amp == "fp16" else None
        self._pin = self.device.type == "cuda"
        self.micro_batch = per_rank_batch(cfg, self.dist.world_size)
        self.data = make_loader(
            dataset, self.micro_batch, seed=cfg.seed, shuffle=cfg.shuffle, num_workers=cfg.num_workers,
            world_size=self.dist.world_size, rank=self.dist.rank, collate_fn=collate_fn,
            pin_memory=self._pin,
        )
        self.ckpts = CheckpointDir(self.out_dir / "checkpoints", cfg.keep_last)
        self.fingerprint = make_fingerprint(self.module, cfg, config_dict, self.dist.world_size)
        self.fingerprint["train"]["param_groups"] = [
            [len(g["params"]), float(g["lr_mult"]), float(g["weight_decay"])] for g in groups
        ]
        self.step = 0
        self.best_value: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last_checkpoint: Optional[Path] = None
        self._checked_output = False

    # ------------------------------------------------------------------ public API
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def fit(self, resume: Union[bool, str, Path] = False, strict: bool = True) -> FitResult:
        """Train until `cfg.steps`.

        `resume=False` starts fresh (refusing an `out_dir` that already holds
        checkpoints); `True` continues from `out_dir`'s last checkpoint if there is one;
        a path continues from that file. `strict=False` allows a changed recipe (not exact).
        """
        cfg = self.cfg
        resumed = self._prepare(resume, strict)
        logger = MetricsLogger(self.out_dir, enabled=self.is_main)
        logger.truncate_after(self.step if resumed else 0)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.is_main and self.progress), leave=False)
        window = StepWindow()
        train_metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        self._tick = time.perf_counter()
        self._t_start = self._tick
        self.model.train()
        try:
            while self.step < cfg.steps:
                values = self._train_step()
                self.step += 1
                window.add(self.step, values)
                bar.update(1)
                last = self.step == cfg.steps
                do_eval = self.eval_fn is not None and (
                    last or (cfg.eval_every > 0 and self.step % cfg.eval_every == 0))
                do_ckpt = last or (cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0)
                if do_eval or do_ckpt or self.step % cfg.log_every == 0:
                    train_metrics = self._flush(window, logger, bar) or train_metrics
                improved = False
                if do_eval:
                    eval_metrics, improved = self._evaluate(logger)
                if do_ckpt or improved:
                    self._save(do_ckpt, improved)
        finally:
            bar.close()
            logger.close()
            if hasattr(self.data, "close"):  # stop stream workers now, not at garbage collection
                self.data.close()
        D.barrier()
        return FitResult(
            step=self.step,
            last_checkpoint=self.last_checkpoint if self.is_main else None,
            best_checkpoint=(self.ckpts.best_path if self.is_main and self.best_step is not None else None),
            best_value=self.best_value,
            train_metrics=train_metrics,
            eval_metrics=eval_metrics,
        )

    # ------------------------------------------------------------------ setup / resume
    def _prepare(self, resume: Union[bool, str, Path], strict: bool) -> bool:
        """Load the checkpoint to resume from (or seed a fresh run); True when resumed."""
        candidates: list[Path]
        if resume is False or resume is None:
            if self.ckpts.has_checkpoints():
                raise UserError(
                    f"{self.out_dir} already holds checkpoints of a run; pass resume=True "
                    "(--resume) to continue it, or choose another out_dir"
                )
            candidates = []
        elif resume is True:
            candidates = self.ckpts.newest_first()
        else:
            candidates = [Path(resume)]
        resumed = self._load_first(candidates, strict) if candidates else False
        if not resumed:
            seed_everything(self.cfg.seed + self.dist.rank)
        if self.is_main:  # only now: a refused resume leaves the run folder as it was
            self.ckpts.clean_tmp()
            run_cfg = {"train": self.cfg.to_dict(), "config": _jsonable(self.config_dict),
                       "world_size": self.dist.world_size}
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "run_config.json", json.dumps(run_cfg, indent=2) + "\n")
        return resumed

    def _load_first(self, candidates: list[Path], strict: bool) -> bool:
        """Resume from the first candidate that reads; unreadable ones are skipped with a
        warning when there is an older one to fall back to. A readable checkpoint of another
        recipe stops the run (that is a choice for the user, not a fallback)."""
        for i, path in enumerate(candidates):
            try:
                state = load_checkpoint(path)
            except UserError as exc:
                if i == len(candidates) - 1:
                    raise
                if self.is_main:
                    log.warning("skipping checkpoint %s: %s; trying %s", path, exc, candidates[i + 1])
                continue
            self._load(path, strict, state)
            return True
        return False

    def _load(self, path: Path, strict: bool, state: Optional[dict[str, Any]] = None) -> None:
        state = load_checkpoint(path) if state is None else state
        changes = check_fingerprint(state.get("fingerprint", {}), self.fingerprint, path, strict)
        if changes and self.is_main:
            log.warning("resuming %s with changes (not exact): %s", path, "; ".join(changes))
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            first = first_line(e)
            raise UserError(f"checkpoint {path} does not fit this trainer ({first[:200]}); "
                            "resume with the model/config that wrote it") from e
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._reset_lrs()
        self.step = int(state["step"])
        data = state.get("data") or {"epoch": state["epoch"], "batch": state["batch"]}
        if "ranks" in data:  # per-rank stream positions
            if len(data["ranks"]) != self.dist.world_size:
                raise UserError(f"checkpoint {path} was written by {len(data['ranks'])} processes and holds "
                                f"one data position per process; resume it with {len(data['ranks'])} processes")
            data = data["ranks"][self.dist.rank]
        self.data.load_state_dict(data)
        best = state.get("best") or {}
        self.best_value, self.best_step = best.get("value"), best.get("step")
        self.last_checkpoint = Path(path)
        rngs = state["rng"]
        restore_rng(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0], self.device)
        if self.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def _reset_lrs(self) -> None:
        """Schedule from the current cfg (identical values under strict resume)."""
        sched = self.scheduler
        sched.lr_lambdas = [self._factor] * len(self.optimizer.param_groups)
        sched.base_lrs = [self.cfg.lr * g["lr_mult"] for g in self.optimizer.param_groups]
        for g, base in zip(self.optimizer.param_groups, sched.base_lrs):
            g["initial_lr"] = base
            g["lr"] = base * self._factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.cfg.amp or "fp32")

    def _train_step(self) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches; values stay on device."""
        accum = self.cfg.grad_accum
        ddp = self.model is not self.module
        sums: dict[str, Any] = {}
        for i in range(accum):
            batch = move_to_device(self.data.next(), self.device, non_blocking=self._pin)
            sync = self.model.no_sync() if ddp and i < accum - 1 else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    out = self.loss_fn(self.model, batch)
                loss = self._check_output(out)
                scaled = loss / accum if accum > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            for k, v in out.items():
                v = v.detach() if isinstance(v, torch.Tensor) else v
                sums[k] = v if k not in sums else sums[k] + v
        values = {k: v / accum for k, v in sums.items()} if accum > 1 else sums
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad is not None:
            values["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._params, self.cfg.clip_grad)
        else:
            values["grad_norm"] = grad_norm(self._params)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return values

    def _check_output(self, out: Any) -> torch.Tensor:
        """The 'loss' of a loss_fn result; the shape of the result is checked once."""
        if self._checked_output:
            return out["loss"]
        if not isinstance(out, Mapping) or "loss" not in out:
            got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise UserError(f"loss_fn must return a dict with key 'loss', got {got}; "
                            "return {'loss': loss, ...}")
        loss = out["loss"]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise UserError("loss_fn's 'loss' must be a scalar tensor; reduce it (e.g. .mean())")
        if not loss.requires_grad:
            raise UserError("loss_fn's 'loss' does not require grad: no trainable parameter of the "
                            "module took part (call the model passed to loss_fn, outside torch.no_grad)")
        for k, v in out.items():
            if not isinstance(v, (torch.Tensor, int, float)) or isinstance(v, bool):
                raise UserError(f"loss_fn returned {k!r} of type {type(v).__name__}; "
                                "only scalar tensors or numbers can be logged")
        self._checked_output = True
        return loss

    # ------------------------------------------------------------------ logging / eval / ckpt
    def _flush(self, window: StepWindow, logger: MetricsLogger, bar: tqdm) -> dict[str, float]:
        """Bring the window to the host (one sync), stop on NaN/Inf, log the means."""
        if not len(window):
            return {}
        rows = window.flush()
        keys = ("loss",) if self.scaler is not None else ("loss", "grad_norm")  # fp16 skips inf grads
        bad = first_non_finite(rows, keys)
        if bad is not None:
            step, what, value = bad
            raise NonFiniteError(step, what, value, where=f" (run {self.out_dir})")
        now = time.perf_counter()
        samples = len(rows) * self.cfg.batch_size
        means = mean_rows(rows)
        means["samples_per_s"] = samples / max(now - self._tick, 1e-9)
        self._tick = now
        lrs = [base * self._factor(self.step - 1) for base in self.scheduler.base_lrs]
        record: dict[str, Any] = {"kind": "train", "step": self.step, "epoch": round(self.data.epoch_float, 4)}
        record.update(means)
        record["lr"] = lrs[0]
        if len(lrs) > 1:
            record.update({f"lr_group{i}": lr for i, lr in enumerate(lrs)})
        record["time_s"] = round(now - self._t_start, 3)
        logger.log(record)
        bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{lrs[0]:.3g}",
                        sps=f"{means['samples_per_s']:.1f}", refresh=False)
        return means

    def _evaluate(self, logger: MetricsLogger) -> tuple[dict[str, float], bool]:
        """Run eval_fn (main rank unless eval_on_all_ranks) and update best tracking."""
        metrics: dict[str, float] = {}
        if self.is_main or self.eval_on_all_ranks:
            self.module.eval()
            try:
                with isolated_rng(self.device), torch.no_grad():
                    raw = self.eval_fn(self.module)  # type: ignore[misc]
            finally:
                self.module.train()
            if not isinstance(raw, Mapping):
                raise UserError(f"eval_fn must return a dict of metrics, got {type(raw).__name__}")
            metrics = {k: float(v) for k, v in raw.items()}
            logger.log({"kind": "eval", "step": self.step, **metrics})
        improved = False
        if self.best_metric is not None and self.is_main:
            if self.best_metric not in metrics:
                raise UserError(
                    f"best_metric {self.best_metric!r} is not among eval_fn's metrics "
                    f"{sorted(metrics)}{close_matches(self.best_metric, metrics)}; fix best_metric"
                )
            v = metrics[self.best_metric]
            if v != v:  # NaN never counts as best
                better = False
            elif self.best_value is None:
                better = True
            else:
                better = v > self.best_value if self.best_mode == "max" else v < self.best_value
            if better:
                self.best_value, self.best_step, improved = v, self.step, True
        # every rank must take part in the (collective) save when rank 0 improved
        improved = bool(D.all_gather_object(improved)[0])
        return metrics, improved

    def _state(self) -> Optional[dict[str, Any]]:
        """The full resume state (collective under DDP: gathers every rank's RNG)."""
        rngs = D.all_gather_object(capture_rng(self.device))
        data = D.all_gather_object(self.data.state_dict())
        if not self.is_main:
            return None
        epoch, batch = self.data.position
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "step": self.step,
            "epoch": epoch,
            "batch": batch,
            "data": data[0] if len(data) == 1 else {"ranks": data},
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "fingerprint": self.fingerprint,
            "best": {"metric": self.best_metric, "mode": self.best_mode,
                     "value": self.best_value, "step": self.best_step},
            "train_cfg": self.cfg.to_dict(),
            "config": flatten_config(self.config_dict) if self.config_dict is not None else {},
        }

    def _save(self, step_ckpt: bool, best: bool) -> None:
        """Write the step checkpoint and/or best.pt on the main rank."""
        state = self._state()
        if state is None:
            return
        written = None
        if step_ckpt:
            written = self.last_checkpoint = self.ckpts.save(state, self.step)
        if best:
            self.ckpts.save_best(state, written)


def _grad_scaler() -> Any:
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # torch < 2.3


def _jsonable(cfg: Any) -> Any:
    """The task config as JSON (dataclasses/dicts; anything else by repr)."""
    def plain(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o, key=repr)
        return str(o) if isinstance(o, Path) else repr(o)

    return None if cfg is None else json.loads(json.dumps(cfg, default=plain))
