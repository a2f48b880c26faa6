"""The one way clipheads writes a file: a uniquely named temporary file in the target's
folder, fsync'ed, then `os.replace`d over the target.

A crash, a full disk or a second process writing the same path (several ranks, two runs)
never leaves a half-written or interleaved file: readers see the old file or the new one.
Temporary names carry the pid and a random suffix, so concurrent writers never share one.
Torch-free on purpose (the CLI imports it before deciding whether torch is needed).
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import UserError

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path` no other writer will pick: `.NAME.PID-RANDOM.tmp`.

    The real suffix is kept before `.tmp`'s marker ends the name, so writers that choose a
    format from the extension (PIL, PyAV) still see it: `.x.png.123-ab12.tmp.png`."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{tag}{TMP_SUFFIX}{path.suffix}")


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some platforms cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _chmod_like_new_file(path: Path) -> None:
    """Some writers (safetensors, mkstemp) create 0600 files; outputs are shared data."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write `path` through (for writers that want a file name:
    safetensors, PIL, PyAV); on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: a directory is in the way; move it or choose another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {path.parent} ({exc.strerror or exc}); choose another --out") from exc
    tmp = temp_path(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer produced no file for {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _chmod_like_new_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # full disk, read-only folder, a directory in the way
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); free space or choose another --out") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(binary_file)` into a temporary file, then replace `path` with it."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save(obj, path)` that never leaves a half-written `path` behind."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_link(src: Path, dst: Path) -> Path:
    """Make `dst` an atomic hard link to `src` (a copy where links are not supported): it
    costs no space and stays valid when `src` is pruned."""
    dst = Path(dst)
    tmp = temp_path(dst)
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
    fsync_dir(dst.parent)
    return dst


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our leftover temporaries (for cleanup)."""
    return name.startswith(".") and f"{TMP_SUFFIX}" in name
