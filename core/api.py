"""The Python API: `clipheads.load(task, ...)` builds a head exactly as the CLI would, without
argparse, so scripts and notebooks get the same configs, checks and defaults."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .config import load_config, resolve_config_path
from .errors import UserError
from .registry import TASKS
from .task import Context, Task


def task_names() -> list[str]:
    """Installed heads (built-in and plugins)."""
    return TASKS.names()


def load(task: str, *, backbone: str | None = None, weights: str | Path | None = None,
         config: str | Path | None = None, overrides: Sequence[str] = (), device: str = "auto",
         out: str | Path | None = None, progress: bool = True, allow_torchscript: bool = False,
         allow_activation_mismatch: bool = False, cache_dir: str | None = None, precision: str = "fp32",
         **values: Any) -> Task:
    """The head `task`, configured like `clipheads TASK ... --config CONFIG --set ...`.

    `config` is a bundled config name or a YAML file (default: the head's own default);
    `overrides` are `key=value` strings, and keyword `values` set top-level config fields
    (e.g. `templates="imagenet80"`); `precision` ('fp32', 'bf16', 'fp16') is the head's
    inference (and training) precision. Nothing heavy is built until the head needs it."""
    cls = TASKS.get(task)
    name = config or cls.default_config
    path = resolve_config_path(cls.name, str(name)) if name else None
    if weights is not None and backbone is None:
        raise UserError("weights= needs backbone='ARCH' naming the file's architecture")
    base: dict[str, Any] = {k: v for k, v in (("backbone", backbone),
                                              ("weights", str(weights) if weights else None)) if v}
    base.update(values)
    cfg = load_config(cls.Config, path, list(overrides), base=base)
    chosen = {o.split("=", 1)[0].strip() for o in overrides} | set(values)
    if config:
        chosen.add("*")
    if backbone:
        chosen.add("backbone")
    ctx = Context(cfg, device=device, out=Path(out) if out else None, allow_torchscript=allow_torchscript,
                  allow_activation_mismatch=allow_activation_mismatch, cache_dir=cache_dir,
                  progress=progress, chosen=chosen, precision=precision)
    return cls(cfg, ctx)
