"""Image-text pairs from webdataset tar shards in img2dataset layout.

Each sample is `KEY.jpg` (or png/webp) + `KEY.txt` (+ `KEY.json` metadata) inside
`.tar` shards, as img2dataset writes them for LAION/CC. The `webdataset` package does
the tar streaming; decoding happens here, so a corrupt image, an undecodable caption or a
broken tar member is skipped with one log line and counted instead of killing the epoch.

Two readers:

- `ImageTextShards`: one finite pass (webdataset splits shards across DDP ranks and
  DataLoader workers), for evaluation and quick looks.
- `ImageTextStream`: the training source behind `clipheads.core.engine.stream.StreamLoader`:
  endless, reproducible per (seed, epoch, rank, worker) and resumable to the exact sample.

Stream protocol (plain data, so the engine and this module share no types):
`set_stream_plan(seed=, world_size=, rank=, num_streams=, rotation=, positions=)` is called
before the DataLoader iterator is created (workers copy the dataset then); each item is
`((logical, epoch, index, skips), sample)`: the logical worker stream, the epoch of that
stream, the sample's raw index in the stream's epoch order, and the stream's running
count of skipped samples (including the ones skipped just before this sample).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from clipheads.core.data.errors import CorruptSample
from clipheads.core.data.images import decode_image_bytes
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.errors import UserError

IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
# Consecutive whole epochs of one stream without a single readable sample before giving up:
# an endless stream that can never yield would otherwise hang every rank.
MAX_EMPTY_EPOCHS = 3

T = TypeVar("T")
Position = tuple[int, int, int]  # (epoch, next raw index in that epoch, skips so far)


def _import_webdataset() -> Any:
    try:
        import webdataset
    except ImportError as exc:
        raise UserError("reading tar shards needs webdataset; run: pip install 'clipheads[data]'") from exc
    return webdataset


def expand_shards(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Brace-expanded shard list ('shards/train-{000000..000003}.tar'); local files must exist."""
    wds = _import_webdataset()
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        out += wds.shardlists.expand_urls(os.fspath(item))
    if not out:
        raise UserError("no webdataset shards given; pass paths like shards/train-{000000..000009}.tar")
    for url in out:
        local = "://" not in url and not url.startswith("pipe:")
        if local and not Path(url).is_file():
            raise UserError(f"webdataset shard not found: {url}; check the shard path or brace range")
    return out


def _tar_error(exc: Exception, urls: Sequence[str]) -> tuple[str | None, str]:
    """(shard named by a webdataset error, short reason): webdataset appends the url/stream to args."""
    text = " ".join(str(a) for a in exc.args)
    shard = next((u for u in urls if u in text), None)
    reason = str(exc.args[0]).split(" @ ")[0] if exc.args else type(exc).__name__
    return shard, reason


def _broken_shard_message(reason: str) -> str:
    return f"unreadable tar data ({reason}); rest of shard skipped"


def _where(sample: dict[str, Any]) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def decode_pair(sample: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """(RGB image, caption, json metadata) of one raw webdataset sample, or CorruptSample."""
    where = _where(sample)
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None or "txt" not in sample:
        raise CorruptSample(where, "sample lacks an image or a .txt caption",
                            fix="each key needs KEY.jpg and KEY.txt in the same shard")
    image = decode_image_bytes(sample[image_key], name=f"{where}.{image_key}")
    try:
        caption = sample["txt"].decode("utf-8").strip()
        meta = json.loads(sample["json"].decode("utf-8")) if "json" in sample else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSample(where, f"caption or metadata is not valid UTF-8 text/json ({exc})") from exc
    if not isinstance(meta, dict):
        raise CorruptSample(where, "json metadata is not an object")
    meta.update({"__key__": sample.get("__key__"), "__url__": sample.get("__url__")})
    return image, caption, meta


class ImageTextShards(IterableDataset):
    """Yields (image, caption) from img2dataset shards; `transform`/`text_transform` applied.

    One finite pass per iteration. `with_meta=True` adds the sample's json metadata (with
    `__key__` and `__url__`) as a third element. `shuffle` > 0 shuffles samples in a
    buffer of that size, seeded by `seed` + the epoch from `set_epoch`. Skips are
    counted in `self.skips` (per worker process when DataLoader workers are used).
    For training use `ImageTextStream` (endless, exactly resumable).
    """

    def __init__(self, urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 transform: Callable[[Any], Any] | None = None,
                 text_transform: Callable[[str], Any] | None = None,
                 shuffle: int = 0, shuffle_shards: bool = False, seed: int = 0,
                 with_meta: bool = False):
        super().__init__()
        self.urls = expand_shards(urls)
        self.transform = transform
        self.text_transform = text_transform
        self.shuffle = shuffle
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.with_meta = with_meta
        self.epoch = 0
        self._broken: set[str] = set()
        self.skips = SkipCounter(f"shards:{Path(self.urls[0]).parent}")

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling so each epoch sees a different (but reproducible) order."""
        self.epoch = epoch

    def _on_error(self, exc: Exception) -> bool:
        """webdataset error handler: log and count a broken shard once per pass, keep streaming.

        webdataset reports one truncated tar at two levels (member read, then tar iteration);
        both name the shard, so the second report of the same shard is not counted again.
        """
        shard, reason = _tar_error(exc, self.urls)
        if shard is not None and shard in self._broken:
            return True
        if shard is not None:
            self._broken.add(shard)
        self.skips.skip(shard or "tar stream", _broken_shard_message(reason), kind="broken shard")
        return True

    def _pipeline(self) -> Any:
        wds = _import_webdataset()
        ds = wds.WebDataset(self.urls, handler=self._on_error,
                            shardshuffle=len(self.urls) if self.shuffle_shards else False,
                            nodesplitter=wds.split_by_node, empty_check=False,
                            seed=self.seed + self.epoch)
        return ds.shuffle(self.shuffle, seed=self.seed + self.epoch) if self.shuffle > 0 else ds

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self._broken = set()
        for sample in self._pipeline():
            decoded = self.skips.attempt(_where(sample), lambda s=sample: decode_pair(s))
            if decoded is None:
                continue
            image, caption, meta = decoded
            image = self.transform(image) if self.transform else image
            text = self.text_transform(caption) if self.text_transform else caption
            yield (image, text, meta) if self.with_meta else (image, text)


# ---------------------------------------------------------------------------- streaming


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from several parts (same on every platform and Python run)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_shuffle(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Shuffle buffer of `size` items; the order depends only on the input and `rng`.

    Our own (rather than webdataset's `.shuffle`) so the exact order is pinned by this code,
    not by a library version: resume replays it to find its place.
    """
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch-CPU global RNGs for one sample's transforms, then restore them.

    torchvision-style transforms draw from the global RNGs; seeding them per sample makes
    augmentation independent of worker count, prefetching and resume, and restoring keeps
    the trainer's own RNG stream (num_workers=0 runs in its process) untouched.
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class _ShardErrors:
    """webdataset error handler for one stream epoch: queues broken-shard reports.

    Reports wait in `pending` until the stream attributes them to the next sample it emits,
    so a resumed run that replays (without decoding) the part before its position neither
    logs nor counts them twice. A shard is reported once per epoch (webdataset reports a
    truncated tar twice), and only by the stream that owns it.
    """

    def __init__(self, urls: Sequence[str], owns: Callable[[str | None], bool]):
        self.urls = urls
        self.owns = owns
        self.seen: set[str] = set()
        self.pending: list[tuple[str, str]] = []

    def __call__(self, exc: Exception) -> bool:
        shard, reason = _tar_error(exc, self.urls)
        if shard is not None and shard in self.seen:
            return True
        if shard is not None:
            self.seen.add(shard)
        if self.owns(shard):
            self.pending.append((shard or "tar stream", _broken_shard_message(reason)))
        return True

    def take(self) -> list[tuple[str, str]]:
        pending, self.pending = self.pending, []
        return pending


class ImageTextStream(IterableDataset):
    """Endless, exactly resumable (image, caption) stream over img2dataset shards.

    Meant to be driven by `StreamLoader`, which sets the plan (seed, rank, worker streams,
    resume positions). Rules, for R ranks x W logical worker streams (N = R*W streams;
    stream id s = rank*W + logical worker; W = 1 without DataLoader workers):

    - shard order: each epoch the shard list is shuffled by a RNG seeded from
      (seed, epoch) (`shuffle_shards=False` keeps the given order); it is the same
      list on every rank and worker.
    - split: with at least N shards, stream s reads shards s, s+N, s+2N, ... of that list
      (disjoint; streams may differ by one shard). With fewer shards than N, every stream
      reads all shards and keeps the samples whose running index over the epoch's
      concatenated shards is s modulo N (each stream still disjoint; reading costs N-fold).
    - sample order: a seeded buffer of `shuffle` samples, RNG seeded from
      (seed, epoch, rank, logical worker); 0 or 1 keeps shard order.
    - raw index: position of a sample in that shuffled stream order, counting samples
      that turn out corrupt. Resume replays raw samples below the saved index without
      decoding them (tar bytes are read again, images are not decoded).
    - transforms run with the global RNGs seeded from (seed, epoch, rank, logical worker,
      raw index) (`seed_transforms=True`), so random augmentation is replayed exactly.
    - each stream loops over epochs on its own, so no rank ever runs out before another.

    Corrupt images, undecodable captions, samples missing a part and truncated tars are
    skipped, logged and counted (`self.skips` in the process that read them; the exact
    running count travels with every item). `num_samples` is the epoch size when known
    (the `num_samples` argument, or img2dataset's `<shard>_stats.json` "successes").
    """

    def __init__(self, urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 transform: Callable[[Any], Any] | None = None,
                 text_transform: Callable[[str], Any] | None = None, *,
                 shuffle: int = 1000, shuffle_shards: bool = True, seed: int = 0,
                 with_meta: bool = False, num_samples: int | None = None,
                 seed_transforms: bool = True):
        super().__init__()
        if not isinstance(shuffle, int) or shuffle < 0:
            raise UserError(f"shuffle buffer size must be an integer >= 0, got {shuffle!r}")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise UserError(f"num_samples must be a positive integer or None, got {num_samples!r}")
        self.urls = expand_shards(urls)
        self.transform = transform
        self.text_transform = text_transform
        self.shuffle = shuffle
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.with_meta = with_meta
        self.seed_transforms = seed_transforms
        self._num_samples = num_samples
        self._stats_read = num_samples is not None
        self._plan: dict[str, Any] | None = None
        self.skips = SkipCounter(f"shards:{Path(self.urls[0]).parent}")

    # -------------------------------------------------------------- plan / sizes
    def set_stream_plan(self, *, seed: int, world_size: int, rank: int, num_streams: int,
                        rotation: int, positions: Sequence[Sequence[int]]) -> None:
        """Where every logical worker stream of this rank starts; call before creating workers.

        Physical DataLoader worker p serves logical stream (p + rotation) % num_streams,
        starting at `positions[logical]` = (epoch, raw index, skips so far).
        """
        if len(positions) != num_streams:
            raise ValueError(f"{len(positions)} positions for {num_streams} streams")
        self._plan = {"seed": int(seed), "world_size": int(world_size), "rank": int(rank),
                      "num_streams": int(num_streams), "rotation": int(rotation),
                      "positions": [tuple(int(v) for v in p) for p in positions]}

    @property
    def num_samples(self) -> int | None:
        """Samples per epoch (all ranks), when known; img2dataset stats are read once, lazily."""
        if not self._stats_read:
            self._stats_read = True
            self._num_samples = _img2dataset_count(self.urls)
        return self._num_samples

    def epoch_shards(self, seed: int, epoch: int) -> list[str]:
        """The shard order of `epoch` (identical on every rank and worker)."""
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(derive_seed("shards", seed, epoch)).shuffle(urls)
        return urls

    # -------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[tuple[int, int, int, int], Any]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self._plan or {"seed": self.seed, "world_size": 1, "rank": 0, "num_streams": workers,
                              "rotation": 0, "positions": [(0, 0, 0)] * workers}
        if plan["num_streams"] != workers:
            raise RuntimeError(f"stream plan is for {plan['num_streams']} worker streams, "
                               f"but the DataLoader runs {workers}")
        logical = (physical + plan["rotation"]) % workers
        return self._endless(plan, logical, workers, plan["positions"][logical])

    def _endless(self, plan: dict[str, Any], logical: int, workers: int,
                 position: Position) -> Iterator[tuple[tuple[int, int, int, int], Any]]:
        """The stream of one logical worker, epoch after epoch, from `position` on."""
        seed, rank = plan["seed"], plan["rank"]
        stream, n_streams = rank * workers + logical, plan["world_size"] * workers
        epoch, start, skips = position
        empty = 0
        while True:
            yielded = False
            share, errors = self._share(seed, epoch, stream, n_streams)
            for index, raw in enumerate(self._epoch_raw(share, seed, epoch, rank, logical, errors)):
                if index < start:  # consumed before the checkpoint: do not decode, log or count
                    errors.take()
                    continue
                skips += self._report(errors.take())
                sample = self._load(raw, (seed, epoch, rank, logical, index))
                if sample is None:
                    skips += 1
                    continue
                yielded = True
                yield (logical, epoch, index, skips), sample
            skips += self._report(errors.take())
            empty = 0 if yielded or start else empty + 1
            if empty >= MAX_EMPTY_EPOCHS:
                raise UserError(
                    f"webdataset stream of rank {rank}, worker {logical} found no readable sample in "
                    f"{empty} passes over its share of {len(self.urls)} shards ({n_streams} rank x "
                    "worker streams); add shards/samples, lower num_workers, or fix the skipped "
                    "samples logged above")
            epoch, start = epoch + 1, 0

    def _share(self, seed: int, epoch: int, stream: int,
               n_streams: int) -> tuple[tuple[list[str], int, int], _ShardErrors]:
        """This stream's shards in `epoch` as (shards, modulo, remainder), and its error handler.

        modulo = 1: whole shards (at least N of them); modulo = N: all shards, every N-th sample.
        """
        order = self.epoch_shards(seed, epoch)
        if len(order) >= n_streams:  # a stream reads only its own shards: it owns their errors
            return (order[stream::n_streams], 1, 0), _ShardErrors(order, lambda shard: True)
        owner = {url: pos % n_streams for pos, url in reversed(list(enumerate(order)))}
        errors = _ShardErrors(order, lambda shard: owner.get(shard, 0) == stream)  # type: ignore[arg-type]
        return (order, n_streams, stream), errors

    def _epoch_raw(self, share: tuple[list[str], int, int], seed: int, epoch: int, rank: int,
                   logical: int, errors: _ShardErrors) -> Iterator[dict[str, Any]]:
        """Raw (undecoded) samples of one stream's epoch, split and shuffled by the rules above."""
        wds = _import_webdataset()
        urls, modulo, remainder = share
        raw: Iterable[dict[str, Any]] = wds.tariterators.tarfile_samples(
            ({"url": url} for url in urls), handler=errors)
        if modulo > 1:
            raw = (s for g, s in enumerate(raw) if g % modulo == remainder)
        rng = random.Random(derive_seed("buffer", seed, epoch, rank, logical))
        return seeded_shuffle(raw, self.shuffle, rng)

    def _report(self, pending: list[tuple[str, str]]) -> int:
        for shard, message in pending:
            self.skips.skip(shard, message, kind="broken shard")
        return len(pending)

    def _load(self, raw: dict[str, Any], where: tuple[int, ...]) -> Any:
        """Decode + transform one raw sample; None when it is skipped (logged and counted)."""
        decoded = self.skips.attempt(_where(raw), lambda: decode_pair(raw))
        if decoded is None:
            return None
        image, caption, meta = decoded
        seeded = self.seed_transforms and (self.transform or self.text_transform)
        with seeded_global_rng(derive_seed("sample", *where)) if seeded else contextlib.nullcontext():
            image = self.transform(image) if self.transform else image
            text = self.text_transform(caption) if self.text_transform else caption
        return (image, text, meta) if self.with_meta else (image, text)


def _img2dataset_count(urls: Sequence[str]) -> int | None:
    """Sum of img2dataset's per-shard `<stem>_stats.json` "successes", or None if any is missing."""
    total = 0
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            return None
        stats = Path(url).with_name(Path(url).stem + "_stats.json")
        try:
            total += int(json.loads(stats.read_text(encoding="utf-8"))["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total or None
