"""Sample-level failures that a dataset may skip (and count) instead of crashing.

They subclass `UserError`, so a caller that reads one file directly (not through a
dataset) still gets the one-line what/where/how message and exit code 2 from the CLI.
"""
from __future__ import annotations

import os

from clipheads.core.errors import UserError


class CorruptSample(UserError):
    """A file exists but cannot be decoded (corrupt, truncated, wrong format)."""

    def __init__(self, path: str | os.PathLike[str], reason: str, fix: str = "re-download or remove it"):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}; {fix}")


class MissingSample(CorruptSample):
    """A sample's file does not exist."""

    def __init__(self, path: str | os.PathLike[str], what: str = "file"):
        super().__init__(path, f"{what} not found", fix="check the path or the dataset root")
