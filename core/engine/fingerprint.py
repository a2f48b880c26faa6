"""What a checkpoint was trained with, and a readable diff against the current run.

Resuming a checkpoint into a different model or recipe either crashes deep inside
`load_state_dict` or, worse, silently trains something else. The fingerprint
(parameter names/shapes/dtypes, the trajectory fields of `TrainConfig`, the task's
config and the world size) is stored in every checkpoint and compared first, so the
user gets one line naming the file and what differs.
"""
from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from clipheads.core.errors import UserError

from ._fmt import short_list
from .config import BOOKKEEPING_FIELDS, TrainConfig


def model_signature(module: nn.Module) -> dict[str, list]:
    """{state-dict key: [shape, dtype]} of the trainable module."""
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")]
            for k, v in module.state_dict().items()}


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict/dataclass -> {'a.b.c': json-friendly value}."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    out: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    out[prefix.rstrip(".")] = _plain(cfg)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, enum.Enum):
        return _plain(v.value)
    if isinstance(v, (os.PathLike,)):
        return os.fspath(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def make_fingerprint(module: nn.Module, cfg: TrainConfig, config: Optional[Any],
                     world_size: int) -> dict[str, Any]:
    """Everything a resume must agree with, as plain data."""
    return {
        "model": model_signature(module),
        "train": cfg.trajectory_dict(),
        "config": flatten_config(config) if config is not None else {},
        "world_size": int(world_size),
    }


def model_diff(saved: Mapping[str, list], current: Mapping[str, list]) -> list[str]:
    """Readable differences between two model signatures ([] when they match)."""
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = sorted(
        f"{k} {tuple(saved[k][0])} in checkpoint vs {tuple(current[k][0])} in model"
        for k in set(saved) & set(current) if list(saved[k][0]) != list(current[k][0])
    )
    dtypes = sorted(
        f"{k} {saved[k][1]} in checkpoint vs {current[k][1]} in model"
        for k in set(saved) & set(current)
        if list(saved[k][0]) == list(current[k][0]) and saved[k][1] != current[k][1]
    )
    out = []
    if missing:
        out.append(f"missing keys (in model, not in checkpoint): {short_list(missing)}")
    if unexpected:
        out.append(f"unexpected keys (in checkpoint, not in model): {short_list(unexpected)}")
    if shapes:
        out.append(f"shape mismatch: {short_list(shapes, 3)}")
    if dtypes:
        out.append(f"dtype mismatch: {short_list(dtypes, 3)}")
    return out


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every recipe field that changed (bookkeeping fields ignored)."""
    out = []
    for k in sorted(set(saved) | set(current)):
        if k.rsplit(".", 1)[-1] in BOOKKEEPING_FIELDS:
            continue
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path,
                      strict: bool = True) -> list[str]:
    """Raise `UserError` if `path` cannot be resumed into the current run.

    A model mismatch always raises. Recipe/world-size changes raise when `strict`,
    otherwise they are returned as warnings (resuming then works but is not exact).
    """
    diffs = model_diff(saved.get("model", {}), current["model"])
    if diffs:
        raise UserError(
            f"checkpoint {path} was saved from a different model: {'; '.join(diffs)}; "
            "resume with the model/config that wrote it, or start a fresh run in another out_dir"
        )
    changes = [f"train.{d}" for d in config_diff(saved.get("train", {}), current["train"])]
    changes += [f"config.{d}" for d in config_diff(saved.get("config", {}), current["config"])]
    if saved.get("world_size", current["world_size"]) != current["world_size"]:
        changes.append(f"world_size: {saved['world_size']} -> {current['world_size']}")
    if changes and strict:
        raise UserError(
            f"checkpoint {path} was saved with a different config: {short_list(changes, 4)}; "
            "restore those values, start a fresh out_dir, or resume with strict=False (not exact)"
        )
    return changes
