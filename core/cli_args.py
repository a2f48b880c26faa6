"""Argument helpers shared by tasks: label lists, image lists, output folders."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .errors import UserError
from .text.labels import check_labels


def add_label_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--labels", help="comma-separated labels, e.g. 'cat,dog,other'")
    group.add_argument("--labels-file", type=Path, help="a text file with one label per line")


def read_labels(args: argparse.Namespace) -> list[str]:
    """Labels from --labels or --labels-file, checked (no empties, no duplicates)."""
    if getattr(args, "labels_file", None):
        path: Path = args.labels_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read labels file {path}: {exc}") from exc
        return check_labels([ln for ln in lines if ln.strip()], where=str(path))
    raw = getattr(args, "labels", None)
    if raw is None:
        raise UserError("no labels given: pass --labels 'a,b,c' or --labels-file FILE")
    return check_labels(raw.split(","), where="--labels")


def int_at_least(low: int):
    """An argparse `type` for integers >= `low` (a bad value is a one-line usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be >= {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def check_writable_dir(path: Path) -> Path:
    """Refuse an output folder that could not be created or written, without creating
    anything (the folder appears only when work starts)."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"output directory {path} is not writable ({probe} is a file, not a folder); "
                        "choose another --out")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output directory {path} is not writable (no write permission on {probe}); "
                        "choose another --out")
    return path


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and parents) and prove it is writable, before any work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".clipheads-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"output directory {path} is not writable ({exc.strerror or exc}); "
                        "choose another --out") from exc
    return path
