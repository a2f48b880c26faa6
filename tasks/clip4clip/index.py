"""A resumable video index: frame features of every video, encoded once.

Layout of an index folder:

    index.json               what made it: backbone fingerprint, frames rule, head id
    chunks/NNNNNN.safetensors  frames [n, T, D], mask [n, T], video [n, D] (the head's
                             embedding), with the n paths + size + mtime in its metadata
    skipped.json             files that could not be decoded, with the reason

Each chunk is written atomically in one file, so a killed run leaves whole chunks only and
the next run encodes just the videos no chunk holds (also how new videos are added).
Frame features depend on the backbone alone: a query with another loose head re-pools
them without decoding a single video; another backbone is refused.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from clipheads.core.atomic import atomic_path, atomic_write_text
from clipheads.core.data.video import VIDEO_SUFFIXES
from clipheads.core.errors import UserError

FORMAT = "clipheads-clip4clip-index"


@dataclass(frozen=True)
class IndexSpec:
    """What must match for frame features to be reused."""

    backbone: str
    fingerprint: str
    max_frames: int
    slice_framepos: int
    dim: int


@dataclass(frozen=True)
class FileKey:
    """A video file as indexed: a changed size or mtime means re-encode."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileKey":
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


def list_videos(source: str) -> list[Path]:
    """Video files of a folder (recursive) or a glob pattern, sorted."""
    p = Path(source)
    if p.is_dir():
        found = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES]
    elif p.is_file():
        found = [p]
    else:
        import glob
        found = [Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file()]
    if not found:
        raise UserError(f"--videos {source}: no video files found (a folder, a file or a glob such as "
                        f"'clips/*.mp4'; suffixes {', '.join(VIDEO_SUFFIXES)})")
    return sorted(found)


@dataclass
class Entries:
    """Everything an index holds, in chunk order."""

    keys: list[FileKey]
    frames: torch.Tensor   # [N, T, D]
    mask: torch.Tensor     # [N, T] bool
    video: torch.Tensor    # [N, D] the building head's embeddings
    heads: list[str]       # the head id of each row's `video`


class VideoIndex:
    """An index folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def chunk_dir(self) -> Path:
        return self.root / "chunks"

    # spec ----------------------------------------------------------------------------
    def read_spec(self) -> IndexSpec | None:
        path = self.root / "index.json"
        if not path.exists():
            return None
        try:
            body = json.loads(path.read_text())
            if body.get("format") != FORMAT:
                raise ValueError("not a clip4clip index")
            return IndexSpec(**body["spec"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a clip4clip index ({exc}); choose another --index folder") from exc

    def open(self, spec: IndexSpec) -> None:
        """Create the index, or check that an existing one was built the same way."""
        old = self.read_spec()
        if old is None:
            if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
                raise UserError(f"--index {self.root}: the folder holds other files; choose an empty or new folder")
            atomic_write_text(self.root / "index.json",
                              json.dumps({"format": FORMAT, "version": 1, "spec": asdict(spec)}, indent=1) + "\n")
            return
        self.check(spec, old)

    def check(self, spec: IndexSpec, old: IndexSpec | None = None) -> IndexSpec:
        old = old or self.read_spec()
        if old is None:
            raise UserError(f"--index {self.root}: no index there; build one with 'clipheads clip4clip index'")
        if old.fingerprint != spec.fingerprint:
            raise UserError(f"--index {self.root} was built with backbone {old.backbone} ({old.fingerprint}); "
                            f"this run uses {spec.backbone} ({spec.fingerprint}): pass --backbone {old.backbone} "
                            "or build a new index")
        if (old.max_frames, old.slice_framepos) != (spec.max_frames, spec.slice_framepos):
            raise UserError(f"--index {self.root} sampled frames with max_frames={old.max_frames}, "
                            f"slice_framepos={old.slice_framepos}; this run asks for {spec.max_frames}, "
                            f"{spec.slice_framepos}: use the same settings or a new index")
        return old

    # chunks --------------------------------------------------------------------------
    def _chunks(self) -> list[Path]:
        return sorted(self.chunk_dir.glob("*.safetensors")) if self.chunk_dir.is_dir() else []

    def known(self) -> set[FileKey]:
        from safetensors import safe_open
        out: set[FileKey] = set()
        for chunk in self._chunks():
            with safe_open(str(chunk), "pt") as f:
                out.update(FileKey(**k) for k in json.loads(f.metadata()["keys"]))
        return out

    def write_chunk(self, keys: list[FileKey], frames: torch.Tensor, mask: torch.Tensor,
                    video: torch.Tensor, head: str) -> Path:
        from safetensors.torch import save_file
        chunks = self._chunks()
        number = int(chunks[-1].stem) + 1 if chunks else 0
        path = self.chunk_dir / f"{number:06d}.safetensors"
        meta = {"keys": json.dumps([asdict(k) for k in keys]), "head": head}
        with atomic_path(path) as tmp:
            save_file({"frames": frames.float().contiguous().cpu(), "mask": mask.bool().contiguous().cpu(),
                       "video": video.float().contiguous().cpu()}, str(tmp), metadata=meta)
        return path

    def entries(self) -> Entries:
        from safetensors import safe_open
        keys, frames, masks, videos, heads = [], [], [], [], []
        for chunk in self._chunks():
            with safe_open(str(chunk), "pt") as f:
                meta = f.metadata()
                rows = [FileKey(**k) for k in json.loads(meta["keys"])]
                keys += rows
                frames.append(f.get_tensor("frames"))
                masks.append(f.get_tensor("mask"))
                videos.append(f.get_tensor("video"))
                heads += [meta["head"]] * len(rows)
        if not keys:
            raise UserError(f"--index {self.root} holds no videos yet; run 'clipheads clip4clip index' first")
        # A re-encoded (changed) file appears again in a later chunk: the newest row wins.
        last = {k.path: i for i, k in enumerate(keys)}
        rows = sorted(last.values())
        pick = torch.tensor(rows)
        return Entries([keys[i] for i in rows], torch.cat(frames)[pick], torch.cat(masks)[pick],
                       torch.cat(videos)[pick], [heads[i] for i in rows])

    def write_skipped(self, skipped: dict[str, str]) -> None:
        atomic_write_text(self.root / "skipped.json", json.dumps(skipped, indent=1, sort_keys=True) + "\n")

    def read_skipped(self) -> dict[str, str]:
        path = self.root / "skipped.json"
        return json.loads(path.read_text()) if path.exists() else {}


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
