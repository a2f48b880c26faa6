"""Checking a user's label list (torch-free: the CLI checks labels before loading models)."""
from __future__ import annotations

from typing import Sequence

from ..errors import UserError


def check_labels(labels: Sequence[str], where: str = "--labels") -> list[str]:
    """Strip labels and refuse empty lists, empty labels and duplicates (one clear line)."""
    cleaned = [str(label).strip() for label in labels]
    if not cleaned:
        raise UserError(f"{where}: the label list is empty; give at least one label, "
                        "e.g. --labels 'cat,dog'")
    if any(not label for label in cleaned):
        raise UserError(f"{where}: empty label at position {cleaned.index('') + 1}; "
                        "remove the stray comma")
    seen: set[str] = set()
    dupes = [label for label in cleaned if label in seen or seen.add(label)]
    if dupes:
        raise UserError(f"{where}: duplicate label(s) {', '.join(sorted(set(dupes)))}; "
                        "each label may appear once")
    return cleaned
