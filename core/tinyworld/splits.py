"""Fixed, disjoint seed ranges for the tiny world's splits.

Each split owns a block of `BLOCK` seeds, so a held-out scene can never be a training
scene, whatever `n` or `start` a caller asks for (both are checked to stay inside the
block). The ranges are part of the dataset definition: changing them changes every
exported split.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from clipheads.core.errors import UserError, close_matches

BLOCK = 10_000_000
SPLIT_OFFSETS: Mapping[str, int] = MappingProxyType({"train": 0, "val": BLOCK, "test": 2 * BLOCK})


def split_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """Seeds of `n` scenes of `split` ('train', 'val' or 'test'), from position `start`."""
    if split not in SPLIT_OFFSETS:
        raise UserError(f"unknown tiny-world split {split!r}{close_matches(split, SPLIT_OFFSETS)}; "
                        f"use one of: {', '.join(SPLIT_OFFSETS)}")
    if n < 0 or start < 0 or start + n > BLOCK:
        raise UserError(f"tiny-world split {split!r} holds {BLOCK} seeds; asked for n={n} "
                        f"from start={start}: use 0 <= start and start + n <= {BLOCK}")
    base = SPLIT_OFFSETS[split] + start
    return list(range(base, base + n))


def split_of_seed(seed: int) -> str:
    """Which split a seed belongs to (inverse of `split_seeds`)."""
    for name, offset in SPLIT_OFFSETS.items():
        if offset <= seed < offset + BLOCK:
            return name
    raise UserError(f"seed {seed} is outside every tiny-world split range "
                    f"[0, {len(SPLIT_OFFSETS) * BLOCK})")
