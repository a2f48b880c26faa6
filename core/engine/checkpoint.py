"""Crash-safe checkpoint files: atomic writes, keep-last-K, `best.pt`, a `last` pointer.

Every write goes through `clipheads.core.atomic` (unique temporary file, fsync, replace),
so a crash or a full disk mid-write leaves the previous checkpoint intact and loadable.
Loading uses `weights_only=True`: a checkpoint is data, never code.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from clipheads.core.atomic import atomic_link, atomic_save, atomic_write_text, is_temp_name
from clipheads.core.errors import UserError, first_line

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointDir", "atomic_save", "atomic_write_text",
           "load_checkpoint"]

FORMAT = "clipheads-train-ckpt"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a trainer checkpoint onto the CPU, or raise `UserError` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass an existing .pt file or resume=True")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, zip error ...
        reason = first_line(e)
        raise UserError(
            f"checkpoint {path} cannot be read ({reason[:200]}); "
            "it is corrupt or not a clipheads training checkpoint; resume from another one"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {path} is not a clipheads training checkpoint (no '{FORMAT}' marker); "
            "to start from pretrained weights load them into the module before Trainer instead"
        )
    if state.get("version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {state['version']}, newer than this "
            f"clipheads ({FORMAT_VERSION}); upgrade clipheads to resume it"
        )
    return state


class CheckpointDir:
    """The `checkpoints/` folder of a run: `step_XXXXXXXX.pt` files, `best.pt`, `last`."""

    def __init__(self, directory: Path, keep_last: Optional[int]) -> None:
        self.dir = Path(directory)
        self.keep_last = keep_last

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    @property
    def pointer_path(self) -> Path:
        return self.dir / "last"

    def step_path(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.pt"

    def steps(self) -> list[tuple[int, Path]]:
        """(step, path) of the step checkpoints on disk, oldest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def last(self) -> Optional[Path]:
        """The newest complete checkpoint: the `last` pointer, else the highest step file."""
        if self.pointer_path.is_file():
            target = self.dir / self.pointer_path.read_text().strip()
            if target.is_file():
                return target
        found = self.steps()
        return found[-1][1] if found else None

    def newest_first(self) -> list[Path]:
        """Resume candidates: the `last` pointer's file, then step files from the newest."""
        order = [p for _, p in reversed(self.steps())]
        last = self.last()
        if last is not None and last in order:
            order.remove(last)
            order.insert(0, last)
        return order

    def has_checkpoints(self) -> bool:
        return bool(self.steps()) or self.best_path.is_file()

    def clean_tmp(self) -> None:
        """Remove temp files left by a process killed mid-write."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if is_temp_name(p.name):
                    p.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write the step checkpoint, move `last` to it, then prune to `keep_last`."""
        path = self.step_path(step)
        atomic_save(state, path)
        atomic_write_text(self.pointer_path, path.name + "\n")
        self.prune(step)
        return path

    def save_best(self, state: dict[str, Any], written: Optional[Path] = None) -> Path:
        """Update `best.pt`: a hard link to `written` (the file just saved for this same
        state) when given, else a fresh write of `state`."""
        if written is not None:
            atomic_link(written, self.best_path)
        else:
            atomic_save(state, self.best_path)
        return self.best_path

    def prune(self, current_step: int) -> None:
        """Delete step files beyond the newest `keep_last` (files after `current_step`,
        left by an abandoned timeline, are not counted and are overwritten when reached)."""
        if self.keep_last is None:
            return
        older = [p for s, p in self.steps() if s <= current_step]
        for p in older[: max(0, len(older) - self.keep_last)]:
            p.unlink(missing_ok=True)
