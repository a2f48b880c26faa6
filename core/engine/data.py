"""Data order the trainer can reproduce and seek into.

The trainer owns its DataLoader so it always knows the exact data position
(epoch, batch index). Resuming skips already-consumed batches through the sampler,
so skipped samples are never loaded or decoded.

Exactness: a dataset that draws augmentations from the global RNG is exact only with
`num_workers=0` and one process. Datasets that derive from `SampleSeeded` draw from a
generator keyed by (seed, epoch, sample index) instead: every sample gets the same draws
on 1 or N ranks, with or without workers, and after a resume.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from clipheads.core.errors import UserError


class SampleSeeded:
    """Mixin for datasets with random augmentation: `sample_generator(index)` is a torch
    Generator seeded by (seed, epoch, index); the loader calls `set_epoch` before each epoch."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample_generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(_mix(_mix(self.seed, self.epoch), int(index)))


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (seeded, epoch-aware, sharded per rank) that can start mid-epoch.

    `set_start(n)` drops the first `n` indices of this rank's order for the current
    epoch only; `set_epoch` clears it. Works with one process too (num_replicas=1).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._start = 0

    def set_start(self, n: int) -> None:
        """Skip the first `n` samples of this rank's order in the current epoch."""
        self._start = max(0, min(int(n), self.num_samples))

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()
        if self._start:
            it = iter(list(it)[self._start:])
        return it

    def __len__(self) -> int:
        return self.num_samples - self._start


class EpochLoader:
    """Endless stream of training batches with a seekable (epoch, batch) position.

    Each epoch draws worker seeds from a generator seeded by (seed, epoch) rather than
    from the global torch RNG: creating an iterator must not consume randomness that
    dropout/augmentation would otherwise see, or a resumed run would diverge.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool,
                 num_workers: int, world_size: int = 1, rank: int = 0,
                 collate_fn: Optional[Callable[[list], Any]] = None,
                 pin_memory: bool = False) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as e:
            raise UserError(
                f"the training dataset {type(dataset).__name__} has no len(); "
                "Trainer needs a map-style Dataset (with __len__ and __getitem__)"
            ) from e
        per_rank = n // world_size
        if per_rank < batch_size:
            raise UserError(
                f"the training dataset has {n} samples, fewer than one batch of {batch_size} for each "
                f"of {world_size} process(es); lower train.batch_size or add data"
            )
        self.seed = seed
        self.batch_size = batch_size
        self.sampler = ResumableSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed)
        self.batches_per_epoch = per_rank // batch_size
        self._gen = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_sampler=BatchSampler(self.sampler, batch_size, drop_last=True),
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            generator=self._gen,
        )
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already consumed
        self._it: Optional[Iterator[Any]] = None

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, batches consumed in it): where the next batch comes from."""
        return self.epoch, self.batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from (the same on every rank)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seek(int(state["epoch"]), int(state["batch"]))

    def seek(self, epoch: int, batch: int) -> None:
        """Continue from `batch` of `epoch` (normalised if it is past the epoch's end)."""
        epoch += batch // self.batches_per_epoch
        batch %= self.batches_per_epoch
        self.epoch, self.batch, self._it = int(epoch), int(batch), None

    def _start_epoch(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        if hasattr(self.loader.dataset, "set_epoch"):  # before workers copy the dataset
            self.loader.dataset.set_epoch(self.epoch)
        self.sampler.set_start(self.batch * self.batch_size)
        self._gen.manual_seed(_mix(self.seed, self.epoch))
        return iter(self.loader)

    def next(self) -> Any:
        """The next batch, rolling over to a new epoch when this one is exhausted."""
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._it = self._start_epoch()
        batch = next(self._it)
        self.batch += 1
        return batch

    @property
    def epoch_float(self) -> float:
        """Progress in epochs, for logs."""
        return self.epoch + self.batch / self.batches_per_epoch


def per_rank_batch(cfg: Any, world_size: int) -> int:
    """The micro-batch one process loads: `batch_size` is the global batch of one optimizer
    step, so a config means the same on 1 or N processes and with any accumulation."""
    parts = world_size * cfg.grad_accum
    if cfg.batch_size % parts:
        raise UserError(
            f"train.batch_size={cfg.batch_size} (the global batch) is not divisible by "
            f"{world_size} process(es) x grad_accum {cfg.grad_accum}; pick a multiple of {parts}")
    return cfg.batch_size // parts


def make_loader(dataset: Any, batch_size: int, **kwargs: Any) -> Any:
    """An `EpochLoader` for map-style datasets, a `StreamLoader` for iterable streams."""
    if hasattr(dataset, "set_stream_plan"):
        from .stream import StreamLoader
        kwargs.pop("shuffle", None)
        return StreamLoader(dataset, batch_size, **kwargs)
    return EpochLoader(dataset, batch_size, **kwargs)


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit seed per (seed, epoch) pair, stable across runs and platforms."""
    return (seed * 6364136223846793005 + epoch * 1442695040888963407 + 1) % (2**63 - 1)


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a (nested) batch to `device`; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch

