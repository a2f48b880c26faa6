"""The task plugin API: what a head provides and what it gets from the core."""
from __future__ import annotations

import argparse
import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .config import Provenance
from .errors import UserError


@dataclasses.dataclass
class TaskConfig:
    """Fields every task config has; a task's config subclasses this."""

    backbone: str = "tiny-world"
    weights: str | None = None
    provenance: Provenance = dataclasses.field(default_factory=Provenance)


class Context:
    """What a running task gets from the core: device, output folder, and a lazily built
    backbone and text bank (so `--help` and bad input cost no model load)."""

    def __init__(self, cfg: TaskConfig, device: str = "cpu", out: Path | None = None,
                 json: bool = False, allow_torchscript: bool = False,
                 cache_dir: str | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.out = out
        self.json = json
        self.allow_torchscript = allow_torchscript
        self.cache_dir = cache_dir

    @cached_property
    def backbone(self):
        from .backbone import FrozenCLIP
        return FrozenCLIP.from_spec(self.cfg.backbone, self.cfg.weights, device=self.device,
                                    allow_torchscript=self.allow_torchscript)

    @cached_property
    def text_bank(self):
        from .text import TextBank
        return TextBank(self.backbone, cache_dir=self.cache_dir)

    def out_dir(self) -> Path:
        if self.out is None:
            raise UserError("this command writes files: pass --out DIR")
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out


class Task:
    """A head. Subclasses set `Config`, `summary`, and implement the actions they support.

    - `add_arguments(action, parser)`: the action's own CLI options.
    - `build()` -> the trainable module (never the frozen backbone);
      `loss(module, batch)` -> dict with key 'loss'. The core trainer uses both.
    - `infer(args)`, `train(args)`, `evaluate(args)`: the CLI actions; return a JSON-able
      result (printed with --json) or None.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    default_config: ClassVar[str | None] = None
    actions: ClassVar[tuple[str, ...]] = ("infer", "train", "eval")

    def __init__(self, cfg: TaskConfig, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        """Add the options of `action` (e.g. --image, --labels) to its subparser."""

    def build(self) -> nn.Module:
        raise NotImplementedError(f"{self.name} has no trainable module")

    def loss(self, module: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{self.name} defines no training loss")

    def infer(self, args: argparse.Namespace) -> Any:
        raise UserError(f"task '{self.name}' has no infer action")

    def train(self, args: argparse.Namespace) -> Any:
        raise UserError(f"task '{self.name}' has no train action")

    def evaluate(self, args: argparse.Namespace) -> Any:
        raise UserError(f"task '{self.name}' has no eval action")

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
