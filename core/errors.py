"""User-facing errors.

Anything a user can cause with bad input (a missing file, an unknown name, a checkpoint of
the wrong shape) raises `UserError`. The CLI turns it into one line on stderr and exit
code 2; library callers get a normal exception they can catch.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input: the message says what, where, and how to fix it, on one line."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for an error message (its type when it has no text)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean: a, b?)' suffix for error messages, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
