"""Crash-safe checkpoint files: atomic writes, keep-last-K, `best.pt`, a `last` pointer.

Every write goes to a temporary file in the same directory, is fsync'ed, then
`os.replace`d over the target, so a crash or a full disk mid-write leaves the previous
checkpoint intact and loadable. Loading uses `weights_only=True`: a checkpoint is
data, never code.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from clipheads.core.errors import UserError

FORMAT = "clipheads-train-ckpt"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
_TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write `path` via a same-directory temp file + fsync + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save(obj, path)` that never leaves a half-written `path` behind."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (pointers, run config)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_link(src: Path, dst: Path) -> None:
    """Make `dst` an atomic hard link to `src` (copy when links are not supported).

    A hard link costs no space or time and `dst` stays valid when `src` is pruned.
    """
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}{_TMP_SUFFIX}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a trainer checkpoint onto the CPU, or raise `UserError` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass an existing .pt file or resume=True")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, zip error ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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

    def has_checkpoints(self) -> bool:
        return bool(self.steps()) or self.best_path.is_file()

    def clean_tmp(self) -> None:
        """Remove temp files left by a process killed mid-write."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX):
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
