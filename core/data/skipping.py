"""Skip-and-count for corrupt or missing samples.

A dataset owns a `SkipCounter`; when a sample cannot be read it logs one line naming the
sample and the reason, counts it, and the dataset returns None (map-style) or moves on
(iterable). `skip_none_collate` then drops the Nones, so a bad file shrinks a batch
instead of becoming zeros or a NaN loss. A batch whose every sample was bad collates to
None, which a training loop skips.

With DataLoader workers, each worker holds its own copy of the counter (processes share
no memory): the log lines are complete, but a counter read in the main process only
counts the samples read there.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Sequence, TypeVar

from torch.utils.data import Dataset, default_collate

from clipheads.core.data.errors import CorruptSample, MissingSample

T = TypeVar("T")
LOGGER = logging.getLogger("clipheads.data")


class SkipCounter:
    """Counts skipped samples of one data source. The first skip is one warning line (saying
    that more will be counted, not printed); the rest log at debug level (`--verbose`), and
    `summary()` gives the one-line total with the first sample and its reason."""

    def __init__(self, source: str, logger: logging.Logger | None = None, announce_first: bool = True):
        self.source = source
        self.announce_first = announce_first  # False: the caller reports `summary()` itself
        self._logger = logger or LOGGER
        self._reasons: Counter[str] = Counter()
        self._keys: list[str] = []
        self._first: str = ""

    @property
    def count(self) -> int:
        """How many samples were skipped so far."""
        return len(self._keys)

    @property
    def keys(self) -> tuple[str, ...]:
        """The skipped samples' keys (paths or ids), in skip order."""
        return tuple(self._keys)

    @property
    def reasons(self) -> dict[str, int]:
        """Skip counts per reason kind ('missing', 'corrupt', or a caller's label)."""
        return dict(self._reasons)

    def skip(self, key: str, reason: str, kind: str = "corrupt") -> None:
        """Record and log one skipped sample."""
        self._keys.append(key)
        self._reasons[kind] += 1
        if len(self._keys) == 1:
            self._first = f"{key} ({reason})"
        if len(self._keys) == 1 and self.announce_first:
            self._logger.warning("%s: skipped %s: %s (further skips are counted; -v lists each)",
                                 self.source, key, reason)
        else:
            self._logger.debug("%s: skipped %s: %s (%d skipped so far)",
                               self.source, key, reason, len(self._keys))

    def attempt(self, key: str, read: Callable[[], T]) -> T | None:
        """`read()`, or None (skipped and counted) when it raises CorruptSample/MissingSample."""
        try:
            return read()
        except CorruptSample as exc:
            self.skip(key, str(exc), kind=_kind(exc))
            return None

    def summary(self) -> str:
        """One line for the end of an epoch or evaluation."""
        if not self._keys:
            return f"{self.source}: no samples skipped"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self._reasons.items()))
        return f"{self.source}: skipped {len(self._keys)} samples ({parts}); first: {self._first}"


def _kind(exc: CorruptSample) -> str:
    return "missing" if isinstance(exc, MissingSample) else "corrupt"


class SkippingDataset(Dataset):
    """Wraps a map-style dataset: items whose read raises CorruptSample become None (counted)."""

    def __init__(self, dataset: Dataset, source: str | None = None):
        self.dataset = dataset
        self.skips = SkipCounter(source or type(dataset).__name__)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.skips.attempt(f"item {index}", lambda: self.dataset[index])


def drop_none(batch: Sequence[T | None]) -> list[T]:
    """The samples of a batch that were not skipped."""
    return [item for item in batch if item is not None]


def skip_none_collate(batch: Sequence[Any], collate: Callable[[list[Any]], Any] = default_collate) -> Any:
    """DataLoader `collate_fn`: drop None samples, collate the rest; None if none are left."""
    kept = drop_none(batch)
    return collate(kept) if kept else None


class SkipNoneCollate:
    """`skip_none_collate` that also gives None when fewer than `min_samples` remain: a
    training batch shrunk to one sample by skipped files would break BatchNorm (one value
    per channel at coarse scales), so the head sees no batch (a zero loss) instead. A class,
    so DataLoader workers can pickle it."""

    def __init__(self, min_samples: int = 1, collate: Callable[[list[Any]], Any] = default_collate):
        self.min_samples = min_samples
        self.collate = collate

    def __call__(self, batch: Sequence[Any]) -> Any:
        kept = drop_none(batch)
        return self.collate(kept) if len(kept) >= max(1, self.min_samples) else None
