"""The task plugin API: what a head declares and what it gets from the core.

A head says only what is specific to it: its config, its CLI options, how to build the
trainable module, its training data, loss, parameter groups, evaluation and export, and
its inference. The core runtime (`clipheads.core.runtime`) does the rest for every head:
device and process group, trainer, resume, evaluation during training, best tracking,
final evaluation, export and install on rank 0, the saved config.

This module imports neither torch nor open_clip, so the CLI can build its parser (and
answer `--help` or a usage error) without loading them; the backbone, the text bank and
torch arrive lazily through `Context`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from .config import Provenance
from .device import resolve_device
from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover - types only
    import torch
    from torch import nn

    from .backbone import FrozenCLIP
    from .runtime import TrainReport
    from .text import TextBank


@dataclasses.dataclass
class TaskConfig:
    """Fields every task config has; a task's config subclasses this."""

    backbone: str = "tiny-world"
    weights: str | None = None
    provenance: Provenance = dataclasses.field(default_factory=Provenance)


class Context:
    """What a running task gets from the core: the device (resolved once, from LOCAL_RANK
    under torchrun, before any model is built), the output folder, and a lazily built
    backbone and text bank (so `--help` and bad input cost no model load)."""

    def __init__(self, cfg: TaskConfig, device: str = "auto", out: Path | None = None,
                 allow_torchscript: bool = False, allow_activation_mismatch: bool = False,
                 cache_dir: str | None = None, progress: bool = True,
                 chosen: set[str] | None = None, precision: str = "fp32"):
        from .precision import check_precision
        self.cfg = cfg
        self.precision = check_precision(precision)
        self.device_spec = device
        self.out = Path(out) if out is not None else None
        self.allow_torchscript = allow_torchscript
        self.allow_activation_mismatch = allow_activation_mismatch
        self.cache_dir = cache_dir
        self.progress = progress
        self.chosen = set(chosen or ())

    def user_chose(self, key: str) -> bool:
        """Whether config value `key` was set on purpose (an override or the user's own
        config file), rather than coming from the automatic default config: a head's own
        recorded settings yield to the former and win over the latter."""
        return "*" in self.chosen or key in self.chosen

    @cached_property
    def device(self) -> "torch.device":
        return resolve_device(self.device_spec)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context inference runs in: autocast at `precision` on this device (fp32: none)."""
        from .precision import autocast
        return autocast(self.device, self.precision)

    @cached_property
    def backbone(self) -> "FrozenCLIP":
        from .backbone import FrozenCLIP
        return FrozenCLIP.from_spec(self.cfg.backbone, self.cfg.weights, device=self.device,
                                    allow_torchscript=self.allow_torchscript,
                                    allow_activation_mismatch=self.allow_activation_mismatch)

    @cached_property
    def text_bank(self) -> "TextBank":
        from .text import TextBank
        return TextBank(self.backbone, cache_dir=self.cache_dir)

    @property
    def has_backbone(self) -> bool:
        """Whether the backbone was already built (a head may still pick another one)."""
        return "backbone" in vars(self)

    def out_dir(self) -> Path:
        """The output folder, created on first use (after the inputs were checked)."""
        from .cli_args import ensure_writable_dir
        if self.out is None:
            raise UserError("this command writes files: pass --out DIR")
        return ensure_writable_dir(self.out)


@dataclasses.dataclass
class TrainData:
    """A head's training data: a map-style dataset (exact epochs) or an iterable stream
    (webdataset shards), and how to collate it."""

    dataset: Any
    collate_fn: Callable[[list], Any] | None = None


# a head's methods that run its model for a user (training has the trainer's `amp`)
PRECISION_METHODS = ("infer", "evaluate", "predict", "index", "precompute", "demo")


def _under_precision(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(self: "Task", *args: Any, **kwargs: Any) -> Any:
        with self.ctx.autocast():
            return method(self, *args, **kwargs)
    run._under_precision = True  # type: ignore[attr-defined]
    return run


class Task:
    """A head. Subclasses set `Config`, `summary`, `actions` and implement what they support.

    Declaring (read without torch, by the CLI):
    - `add_arguments(action, parser)`: the action's own CLI options. `--resume`, `--install`,
      `--out`, `--device` and the other common options are declared by the core.

    Inference and evaluation (plain Python arguments, never an argparse Namespace):
    - `infer(**options)` -> JSON-able results; the CLI action `infer` calls it with the
      parsed options of `add_arguments` (labels already read into `labels: list[str]`).
    - `evaluate(**options)` -> a JSON-able dict (the CLI action `eval`).
    - `describe(action, result)` -> human-readable lines (the CLI prints them without --json).

    Training (the runtime calls these; `train(out, resume=..., install=...)` runs them):
    - `apply_options("train", **options)`: turn CLI shortcuts (e.g. `--data`) into config values.
    - `build_model()` -> the trainable module (never the frozen backbone);
    - `train_data()` -> `TrainData`; `loss(module, batch)` -> {"loss": scalar, ...};
    - `param_groups(module)` -> optimizer groups (`lr_mult`), or None for one group;
    - `ddp_options()` -> extra DistributedDataParallel arguments (default none);
    - `evaluate_module(module)` -> metrics during training (rank 0; `best_metric` picks best.pt);
    - `final_metrics(module, last_eval)` -> the run's reported metrics (default: the last eval);
    - `export(module, out, report)` -> the artifact folder/file a user keeps;
    - `check_install()` / `install(exported)` for heads that ship a bundled artifact.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    default_config: ClassVar[str | None] = None
    actions: ClassVar[tuple[str, ...]] = ("infer", "train", "eval")
    installable: ClassVar[bool] = False  # `train --install` ships the result as a bundled artifact
    writes: ClassVar[tuple[str, ...]] = ()  # actions besides train whose --out is required
    best_metric: ClassVar[str | None] = None
    best_mode: ClassVar[str] = "max"

    def __init__(self, cfg: TaskConfig, ctx: Context | None = None):
        self.cfg = cfg
        self.ctx = ctx if ctx is not None else Context(cfg)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A head's inference entry points run under the context's precision (autocast),
        so `--precision` reaches every head, plugins included, without code of their own."""
        super().__init_subclass__(**kwargs)
        for name in PRECISION_METHODS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_under_precision", False):
                setattr(cls, name, _under_precision(method))

    # declaring ----------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        """Add the options of `action` (e.g. --image, --labels) to its subparser."""

    def apply_options(self, action: str, **options: Any) -> None:
        """CLI shortcuts that are config values (they land in the saved config)."""
        unknown = {k: v for k, v in options.items() if v not in (None, False, [], ())}
        if unknown:
            raise UserError(f"{self.name} {action}: options {', '.join(sorted(unknown))} are not "
                            "handled by this head (set them with --set instead)")

    # inference and evaluation ---------------------------------------------------------------
    def infer(self, **options: Any) -> Any:
        raise UserError(f"task '{self.name}' has no infer action")

    def evaluate(self, **options: Any) -> Any:
        raise UserError(f"task '{self.name}' has no eval action")

    def describe(self, action: str, result: Any) -> list[str]:
        """Lines a person reads after `action` (the CLI prints them unless --json)."""
        return []

    # training -----------------------------------------------------------------------------
    def train(self, out: str | Path, *, resume: bool | str | Path = False, install: bool = False,
              progress: bool | None = None) -> "TrainReport":
        """Train this head into `out` with the core runtime (see `clipheads.core.runtime`);
        `resume=True` continues from the newest readable checkpoint, a path from that file."""
        if "train" not in self.actions:
            raise UserError(f"task '{self.name}' has no train action")
        from .runtime import run_training
        return run_training(self, Path(out), resume=resume, install=install,
                            progress=self.ctx.progress if progress is None else progress)

    def check_training(self, install: bool) -> None:
        """Refuse a bad training request before anything is built or written."""
        if install and not self.installable:
            raise UserError(f"task '{self.name}' has nothing to install; drop --install")
        if install:
            self.check_install()

    def check_install(self) -> None:
        """Raise UserError when this run's result may not become the bundled artifact."""

    def build_model(self) -> "nn.Module":
        raise UserError(f"task '{self.name}' has no trainable module")

    def train_data(self) -> TrainData:
        raise UserError(f"task '{self.name}' defines no training data")

    def loss(self, module: "nn.Module", batch: Any) -> Mapping[str, Any]:
        raise NotImplementedError(f"{self.name} defines no training loss")

    def param_groups(self, module: "nn.Module") -> list[dict] | None:
        return None

    def ddp_options(self) -> dict[str, Any]:
        """Extra `DistributedDataParallel` arguments, e.g. `find_unused_parameters=True`
        for a module whose configuration leaves some parameters out of the loss."""
        return {}

    def evaluate_module(self, module: "nn.Module") -> Mapping[str, float] | None:
        """Metrics of the module being trained (eval mode, no grad, rank 0); None = no eval."""
        return None

    def final_metrics(self, module: "nn.Module", last_eval: Mapping[str, float]) -> dict[str, Any]:
        """The metrics a finished run reports; by default the trainer's last evaluation
        (or a fresh one when a finished run was resumed and nothing was evaluated)."""
        if last_eval:
            return dict(last_eval)
        return dict(self.evaluate_module(module) or {})

    def export(self, module: "nn.Module", out: Path, report: "TrainReport") -> Path | None:
        """Write what a user keeps from training (head folder, exported CLIP)."""
        return None

    def install(self, exported: Path) -> Path:
        raise UserError(f"task '{self.name}' has nothing to install")

    # demo -----------------------------------------------------------------------------------
    def demo(self, examples: list[Path], out: Path) -> list["DemoItem"] | None:
        """Run on the bundled example images with tiny-world weights, writing into `out`;
        return gallery entries, or None when this head has nothing to show."""
        return None


@dataclasses.dataclass
class DemoItem:
    """One gallery cell: images (relative to the gallery folder) and lines of text."""

    title: str
    images: list[str]
    lines: list[str] = dataclasses.field(default_factory=list)
