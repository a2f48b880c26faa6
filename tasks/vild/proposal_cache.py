"""The ViLD-image proposal cache: for each training image, up to M proposal boxes and
the frozen CLIP's embedding of each (1.0x + 1.5x crops, summed, normalised).

Layout (a folder):

    cache.json             what made it: backbone fingerprint, scales, M, proposal source, shard size
    shard-00000.safetensors  images [k*S, (k+1)*S) of the dataset order: `boxes` [n, 4] (input
                             pixels), `embeddings` [n, E] (fp16), `counts` [images], and in the
                             metadata the image ids and the images skipped as unreadable

Each shard is written atomically, so a run killed at any point leaves whole shards and
at most a hidden temporary file; `resume` trusts a shard only when it opens and its
metadata matches, and recomputes the rest. Ranks take shards round-robin. A cache from
another backbone (or made with other scales or M) is refused by its fingerprint.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from clipheads.core.atomic import atomic_path, atomic_write_text
from clipheads.core.errors import UserError

META = "cache.json"
VERSION = 1


@dataclass(frozen=True)
class CacheSpec:
    """Everything that decides a cache's content; two runs with equal specs are interchangeable."""

    backbone_fingerprint: str
    scales: tuple[float, ...]
    max_proposals: int
    proposal_source: str          # "rpn:<detector digest>" or "file:<sha256>"
    images: int
    shard_size: int
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "scales": list(self.scales)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Path) -> "CacheSpec":
        try:
            data = json.loads(text)
            data["scales"] = tuple(data["scales"])
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise UserError(f"{where} is not a clipheads proposal cache description ({exc}); "
                            "point --cache at a folder written by `clipheads vild precompute`") from exc

    @property
    def num_shards(self) -> int:
        return -(-self.images // self.shard_size)


@dataclass
class ShardRecord:
    """One image's cached proposals: boxes [M, 4] in input pixels, embeddings [M, E]."""

    image_id: int
    boxes: torch.Tensor
    embeddings: torch.Tensor


class ProposalCache:
    """A cache folder (see the module docstring)."""

    def __init__(self, root: str | Path, spec: CacheSpec):
        self.root, self.spec = Path(root), spec

    # opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, backbone_fingerprint: str | None = None) -> "ProposalCache":
        """An existing cache; with `backbone_fingerprint`, refused when made by another backbone."""
        root = Path(root)
        meta = root / META
        if not meta.is_file():
            raise UserError(f"no proposal cache at {root} ({META} missing); make one with "
                            "`clipheads vild precompute --out DIR`")
        spec = CacheSpec.from_json(meta.read_text(encoding="utf-8"), meta)
        if backbone_fingerprint is not None and spec.backbone_fingerprint != backbone_fingerprint:
            raise UserError(f"the proposal cache {root} was made with backbone {spec.backbone_fingerprint}, this "
                            f"run uses {backbone_fingerprint}; precompute a cache with this backbone")
        return cls(root, spec)

    @classmethod
    def create_or_resume(cls, root: str | Path, spec: CacheSpec) -> "ProposalCache":
        """A new cache, or the existing one at `root` when it was made with the same spec."""
        root = Path(root)
        meta = root / META
        if meta.is_file():
            old = CacheSpec.from_json(meta.read_text(encoding="utf-8"), meta)
            if old != spec:
                diff = {k: (getattr(old, k), getattr(spec, k)) for k in asdict(spec) if getattr(old, k) != getattr(spec, k)}
                raise UserError(f"{root} holds a proposal cache made differently ({diff}); "
                                "choose another --out or delete that folder")
        elif root.exists() and any(root.iterdir()):
            raise UserError(f"{root} exists and is not a proposal cache; choose an empty or new --out folder")
        else:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(meta, spec.to_json())
        return cls(root, spec)

    # shards ---------------------------------------------------------------------------------
    def shard_path(self, k: int) -> Path:
        return self.root / f"shard-{k:05d}.safetensors"

    def shard_range(self, k: int) -> range:
        return range(k * self.spec.shard_size, min((k + 1) * self.spec.shard_size, self.spec.images))

    def is_complete(self, k: int) -> bool:
        """Whether shard `k` exists, opens, and covers exactly its images."""
        path = self.shard_path(k)
        if not path.is_file():
            return False
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                counts = f.get_tensor("counts")
            return int(meta.get("shard", -1)) == k and len(json.loads(meta["image_ids"])) == len(self.shard_range(k)) \
                and int(counts.numel()) == len(self.shard_range(k))
        except Exception:   # a truncated or foreign file: recompute it, never trust it
            return False

    def pending(self, rank: int = 0, world: int = 1) -> list[int]:
        """Shards this rank still has to write (round-robin over ranks)."""
        return [k for k in range(self.spec.num_shards) if k % world == rank and not self.is_complete(k)]

    def write_shard(self, k: int, records: list[ShardRecord | None], image_ids: list[int]) -> None:
        """Write shard `k`; `None` records are images skipped as unreadable (stored as 0 proposals)."""
        from safetensors.torch import save_file
        dim = next((r.embeddings.shape[1] for r in records if r is not None), 0)
        boxes = [r.boxes.float().cpu() if r is not None else torch.zeros(0, 4) for r in records]
        embs = [r.embeddings.half().cpu() if r is not None else torch.zeros(0, dim, dtype=torch.float16)
                for r in records]
        tensors = {"boxes": torch.cat(boxes).contiguous(), "embeddings": torch.cat(embs).contiguous(),
                   "counts": torch.tensor([len(b) for b in boxes], dtype=torch.int64)}
        skipped = [i for i, r in zip(image_ids, records) if r is None]
        meta = {"shard": str(k), "image_ids": json.dumps(image_ids), "skipped": json.dumps(skipped)}
        with atomic_path(self.shard_path(k)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def missing(self) -> list[int]:
        return [k for k in range(self.spec.num_shards) if not self.is_complete(k)]

    def load(self) -> dict[int, ShardRecord]:
        """Every image's record, by image id (the whole cache in memory: fine up to a few
        million proposals; embeddings stay fp16)."""
        missing = self.missing()
        if missing:
            raise UserError(f"the proposal cache {self.root} is incomplete (shards {missing[:5]} missing); "
                            "rerun `clipheads vild precompute` with the same arguments to finish it")
        from safetensors import safe_open
        out: dict[int, ShardRecord] = {}
        for k in range(self.spec.num_shards):
            with safe_open(str(self.shard_path(k)), framework="pt") as f:
                ids = json.loads(f.metadata()["image_ids"])
                counts = f.get_tensor("counts").tolist()
                boxes, embs = f.get_tensor("boxes"), f.get_tensor("embeddings")
            for image_id, b, e in zip(ids, boxes.split(counts), embs.split(counts)):
                out[int(image_id)] = ShardRecord(int(image_id), b, e)
        return out

    def skipped(self) -> list[int]:
        from safetensors import safe_open
        out: list[int] = []
        for k in range(self.spec.num_shards):
            if self.is_complete(k):
                with safe_open(str(self.shard_path(k)), framework="pt") as f:
                    out += json.loads(f.metadata()["skipped"])
        return out


def fill_cache(cache: ProposalCache, image_ids: list[int],
               embed: Callable[[int], ShardRecord | None], rank: int = 0, world: int = 1,
               progress: Callable[[Iterable[int]], Iterable[int]] = lambda it: it) -> int:
    """Write this rank's pending shards; `embed(image_id)` gives a record or None (an
    unreadable image, skipped and counted). Returns the number of shards written."""
    if len(image_ids) != cache.spec.images:
        raise ValueError(f"{len(image_ids)} images for a cache of {cache.spec.images}")
    written = 0
    for k in progress(cache.pending(rank, world)):
        ids = [image_ids[i] for i in cache.shard_range(k)]
        cache.write_shard(k, [embed(i) for i in ids], ids)
        written += 1
    return written
