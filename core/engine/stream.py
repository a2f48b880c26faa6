"""Endless training batches from an iterable shard dataset, with an exact, checkpointable position.

`EpochLoader` (data.py) seeks into a map-style dataset through its sampler. Shard streams
(webdataset tars) have no random access, so `StreamLoader` instead tracks where each
*logical worker stream* is and lets the dataset replay up to there on resume.

How the position works:

- The dataset (e.g. `clipheads.core.data.webdataset_pairs.ImageTextStream`) yields items
  `((logical, epoch, index, skips), sample)` and accepts
  `set_stream_plan(seed=, world_size=, rank=, num_streams=, rotation=, positions=)`.
- With W DataLoader workers (W = 1 logical stream when `num_workers=0`), each worker batches
  its own samples (`batch_size` goes to the DataLoader, so a batch never mixes streams) and
  PyTorch takes batches round-robin from worker 0. Batch B therefore comes from logical
  stream B % W. After B batches, a fresh iterator's physical worker p serves logical stream
  (p + B) % W, so the round-robin continues where it stopped.
- The collate wrapper keeps the tag of each batch's last sample; the loader records, per
  logical stream, (epoch, last raw index + 1, running skip count). That, plus B, is the
  whole state: plain ints, JSON-able.
- On resume each stream replays its current epoch up to its saved raw index without
  decoding (tar bytes are read, images are not decoded or transformed) and continues;
  random augmentation is seeded per sample, so batches are identical to an uninterrupted run.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, default_collate

from clipheads.core.errors import UserError

STATE_FORMAT = "clipheads-stream"
STATE_VERSION = 1


class _TaggedCollate:
    """DataLoader collate_fn: strips the position tags, collates the samples, returns (tag, batch).

    A class (not a closure) so it pickles when workers are spawned instead of forked.
    """

    def __init__(self, collate: Callable[[list], Any]):
        self.collate = collate

    def __call__(self, items: list[tuple[tuple[int, ...], Any]]) -> tuple[tuple[int, ...], Any]:
        tags = [tag for tag, _ in items]
        if any(tag[0] != tags[-1][0] for tag in tags):
            raise RuntimeError("a batch mixes samples of different worker streams")
        return tuple(int(v) for v in tags[-1]), self.collate([sample for _, sample in items])


class StreamLoader:
    """Endless batches from an iterable shard dataset; position is checkpointable.

    `dataset` must follow the stream protocol above (`ImageTextStream` does). `seed` fixes
    shard order, shuffle buffers and per-sample augmentation. Resume needs the same seed,
    world size, rank and number of logical worker streams (`num_workers`, 0 counting as 1);
    the batch size may change (positions are per sample).
    """

    def __init__(self, dataset: Any, batch_size: int, *, seed: int, num_workers: int,
                 world_size: int = 1, rank: int = 0, collate_fn: Optional[Callable[[list], Any]] = None,
                 pin_memory: bool = False) -> None:
        _check_args(dataset, batch_size, num_workers, world_size, rank)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size, self.rank = int(world_size), int(rank)
        self.num_streams = max(int(num_workers), 1)
        self._positions: list[list[int]] = [[0, 0, 0] for _ in range(self.num_streams)]
        self._batches = 0
        self._gen = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=int(num_workers),
                                 collate_fn=_TaggedCollate(collate_fn or default_collate),
                                 pin_memory=pin_memory, generator=self._gen)
        self._it: Optional[Iterator[Any]] = None

    # ------------------------------------------------------------------ batches
    def next(self) -> Any:
        """The next batch (already collated); epochs roll over inside each stream."""
        if self._it is None:
            self._it = self._start()
        failure = None
        try:
            tag, batch = next(self._it)
        except StopIteration:
            failure = (f"the stream dataset {type(self.dataset).__name__} ended; "
                       "StreamLoader needs an endless dataset such as ImageTextStream")
        except UserError as exc:
            failure = _one_line(exc)
        if failure is not None:  # raised outside the handler: no traceback keeps the workers alive
            self.close()
            raise UserError(failure)
        logical, epoch, index, skips = tag
        if logical != self._batches % self.num_streams:
            raise RuntimeError(f"batch {self._batches} came from worker stream {logical}, expected "
                               f"{self._batches % self.num_streams}; the DataLoader did not round-robin")
        self._positions[logical] = [epoch, index + 1, skips]
        self._batches += 1
        return batch

    def _start(self) -> Iterator[Any]:
        """A DataLoader iterator whose workers continue every logical stream at its position."""
        self.dataset.set_stream_plan(seed=self.seed, world_size=self.world_size, rank=self.rank,
                                     num_streams=self.num_streams,
                                     rotation=self._batches % self.num_streams,
                                     positions=[list(p) for p in self._positions])
        # worker base seeds come from this generator, never from the global RNG
        self._gen.manual_seed(_mix(self.seed, self.rank, self._batches))
        return iter(self.loader)

    def close(self) -> None:
        """Stop the worker processes (a later `next()` starts them again at the same position)."""
        it, self._it = self._it, None
        # Now, not at garbage collection: a DataLoader iterator that raised sits in a reference
        # cycle, and when the cycle collector tears it down its queues may already be gone,
        # leaving the shutdown to wait out a join timeout per worker.
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    # ------------------------------------------------------------------ position
    @property
    def position(self) -> tuple[int, int]:
        """(whole epochs, batches consumed) for logs and checkpoint metadata."""
        return int(self.epoch_float), self.batches

    @property
    def batches(self) -> int:
        """Batches consumed on this rank since the start of the run."""
        return self._batches

    @property
    def skipped(self) -> int:
        """Corrupt/missing samples skipped so far on this rank (all worker streams, resumes included).

        Counted up to the last consumed batch, so it does not depend on worker prefetching.
        """
        return sum(p[2] for p in self._positions)

    @property
    def epoch_float(self) -> float:
        """Progress in epochs, for logs.

        With a known epoch size (`dataset.num_samples`: all ranks' samples): batches x
        batch_size x world_size / num_samples (skipped samples make it slightly low).
        Otherwise the mean epoch index of this rank's worker streams (whole epochs only).
        """
        total = getattr(self.dataset, "num_samples", None)
        if total:
            return self._batches * self.batch_size * self.world_size / total
        return sum(p[0] for p in self._positions) / self.num_streams

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is: plain ints and lists (JSON/pickle-able)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "batches": self._batches,
                "seed": self.seed, "world_size": self.world_size, "rank": self.rank,
                "num_streams": self.num_streams, "batch_size": self.batch_size,
                "streams": [list(p) for p in self._positions]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly from `state` (restarts the workers if batches were already drawn)."""
        streams = _check_state(state)
        for key, mine in (("seed", self.seed), ("world_size", self.world_size), ("rank", self.rank),
                          ("num_streams", self.num_streams)):
            if int(state[key]) != mine:
                raise UserError(
                    f"the saved stream position has {key}={state[key]} but this loader has {key}={mine}; "
                    "resume with the same seed, number of processes and num_workers (0 and 1 are the same)")
        self.close()
        self._batches = int(state["batches"])
        self._positions = streams


def _check_args(dataset: Any, batch_size: int, num_workers: int, world_size: int, rank: int) -> None:
    if not callable(getattr(dataset, "set_stream_plan", None)):
        raise UserError(f"{type(dataset).__name__} is not a resumable stream dataset (no set_stream_plan); "
                        "use clipheads.core.data.webdataset_pairs.ImageTextStream")
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("world_size", world_size, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"StreamLoader {name} must be an integer >= {low}, got {value!r}")
    if rank >= world_size:
        raise UserError(f"StreamLoader rank {rank} is out of range for world_size {world_size}")


def _check_state(state: Any) -> list[list[int]]:
    """The per-stream positions of a saved state, or UserError if it is not one."""
    try:
        ok = state["format"] == STATE_FORMAT and int(state["version"]) == STATE_VERSION
        streams = [[int(v) for v in p] for p in state["streams"]]
        ok = ok and int(state["batches"]) >= 0 and all(len(p) == 3 and min(p) >= 0 for p in streams)
        ok = ok and all(key in state for key in ("seed", "world_size", "rank", "num_streams"))
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"the saved data position is not a StreamLoader state ({STATE_FORMAT!r} "
                        f"v{STATE_VERSION}); resume from a checkpoint written with a stream loader")
    return streams


def _one_line(exc: BaseException) -> str:
    """A UserError re-raised from a DataLoader worker carries a traceback; keep its message line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    head, sep, tail = lines[-1].partition(": ")
    return tail if sep and head.endswith("Error") else lines[-1]


def _mix(*parts: int) -> int:
    """A 63-bit seed from ints, stable across runs and platforms."""
    h = 1
    for p in parts:
        h = (h * 6364136223846793005 + p * 1442695040888963407 + 1) % (2**63 - 1)
    return h
