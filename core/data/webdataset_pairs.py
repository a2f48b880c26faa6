"""Image-text pairs from webdataset tar shards in img2dataset layout.

Each sample is `KEY.jpg` (or png/webp) + `KEY.txt` (+ `KEY.json` metadata) inside
`.tar` shards, as img2dataset writes them for LAION/CC. The `webdataset` package does
the tar streaming, shard splitting across DDP ranks and DataLoader workers, and optional
shuffling; decoding happens here, so a corrupt image, an undecodable caption or a
broken tar member is skipped with one log line and counted instead of killing the epoch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import IterableDataset

from clipheads.core.data.errors import CorruptSample
from clipheads.core.data.images import decode_image_bytes
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.errors import UserError

IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


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


class ImageTextShards(IterableDataset):
    """Yields (image, caption) from img2dataset shards; `transform`/`text_transform` applied.

    `with_meta=True` adds the sample's json metadata (with `__key__` and `__url__`) as a
    third element. `shuffle` > 0 shuffles samples in a buffer of that size, seeded by
    `seed` + the epoch from `set_epoch`. Skips are
    counted in `self.skips` (per worker process when DataLoader workers are used).
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
        text = " ".join(str(a) for a in exc.args)
        shard = next((u for u in self.urls if u in text), None)
        if shard is not None and shard in self._broken:
            return True
        if shard is not None:
            self._broken.add(shard)
        reason = str(exc.args[0]).split(" @ ")[0] if exc.args else type(exc).__name__
        self.skips.skip(shard or "tar stream", f"unreadable tar data ({reason}); rest of shard skipped",
                        kind="broken shard")
        return True

    def _pipeline(self) -> Any:
        wds = _import_webdataset()
        ds = wds.WebDataset(self.urls, handler=self._on_error,
                            shardshuffle=len(self.urls) if self.shuffle_shards else False,
                            nodesplitter=wds.split_by_node, empty_check=False,
                            seed=self.seed + self.epoch)
        return ds.shuffle(self.shuffle, seed=self.seed + self.epoch) if self.shuffle > 0 else ds

    def _decode(self, sample: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
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
        meta.update({"__key__": sample.get("__key__"), "__url__": sample.get("__url__")})
        return image, caption, meta

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self._broken = set()
        for sample in self._pipeline():
            where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            decoded = self.skips.attempt(where, lambda s=sample: self._decode(s))
            if decoded is None:
                continue
            image, caption, meta = decoded
            image = self.transform(image) if self.transform else image
            text = self.text_transform(caption) if self.text_transform else caption
            yield (image, text, meta) if self.with_meta else (image, text)
