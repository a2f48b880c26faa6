"""Formatting helpers for one-line error messages."""
from __future__ import annotations

from typing import Sequence


def short_list(items: Sequence[str], n: int = 5) -> str:
    """'a, b, c … (+7 more)': enough names to act on, still one line."""
    head = ", ".join(items[:n])
    return head + (f" … (+{len(items) - n} more)" if len(items) > n else "")
