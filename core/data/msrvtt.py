"""MSR-VTT-style text-video data: annotation json/csv -> videos with all their captions.

Two annotation shapes are read: MSR-VTT's json (`{"videos": [{"video_id", "split"?}],
"sentences": [{"video_id", "caption"}]}`, ~20 captions per video) and CLIP4Clip's csv
files (a `video_id` column, plus `sentence` for the 1k-A test csv, one caption per
row). Captions are grouped per video, so retrieval metrics can be multi-caption aware:
`caption_index` lists (caption, video index) pairs for text->video ranking.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch.utils.data import Dataset

from clipheads.core.data.errors import MissingSample
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.data.video import VIDEO_SUFFIXES, read_video_frames
from clipheads.core.errors import UserError



@dataclass(frozen=True)
class VideoEntry:
    """One video id and its captions (possibly none, e.g. the 9k training csv)."""

    video_id: str
    captions: tuple[str, ...]


def _group(order: list[str], pairs: list[tuple[str, str]]) -> list[VideoEntry]:
    caps: dict[str, list[str]] = {vid: [] for vid in order}
    for vid, caption in pairs:
        caps.setdefault(vid, []).append(caption)
    return [VideoEntry(vid, tuple(c)) for vid, c in caps.items()]


def load_msrvtt_json(path: str | os.PathLike[str], split: str | None = None) -> list[VideoEntry]:
    """Videos (in file order) with their captions; `split` filters on the videos' 'split' field."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        videos, sentences = data["videos"], data["sentences"]
        order = [str(v["video_id"]) for v in videos
                 if split is None or v.get("split", split) == split]
        wanted = set(order)
        pairs = [(str(s["video_id"]), str(s["caption"])) for s in sentences
                 if str(s["video_id"]) in wanted]
    except FileNotFoundError as exc:
        raise UserError(f"MSR-VTT annotation file not found: {p}; pass the MSRVTT json path") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot parse MSR-VTT json {p}: {exc}; is it the MSRVTT_data.json format?") from exc
    except (KeyError, TypeError) as exc:
        raise UserError(f"{p} is not MSR-VTT-shaped (missing {exc}); expected 'videos' and "
                        "'sentences' lists with video_id/caption fields") from exc
    return _group(order, pairs)


def load_msrvtt_csv(path: str | os.PathLike[str]) -> list[VideoEntry]:
    """Videos from a CLIP4Clip-style csv: `video_id` (+ `sentence`) columns, one row per caption."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as exc:
        raise UserError(f"MSR-VTT csv not found: {p}; pass the MSRVTT_*.csv path") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read MSR-VTT csv {p}: {exc}") from exc
    if rows and "video_id" not in rows[0]:
        raise UserError(f"{p} has no 'video_id' column (columns: {', '.join(rows[0])}); "
                        "expected the MSR-VTT csv layout")
    order = list(dict.fromkeys(r["video_id"] for r in rows))
    pairs = [(r["video_id"], r["sentence"]) for r in rows if r.get("sentence")]
    return _group(order, pairs)


def load_msrvtt(path: str | os.PathLike[str], split: str | None = None) -> list[VideoEntry]:
    """`load_msrvtt_json` or `load_msrvtt_csv`, by file suffix."""
    if Path(path).suffix.lower() == ".csv":
        return load_msrvtt_csv(path)
    return load_msrvtt_json(path, split)


def find_video(video_dir: Path, video_id: str) -> Path:
    """`video_dir/VIDEO_ID.mp4` (or another known suffix); MissingSample when absent."""
    for suffix in VIDEO_SUFFIXES:
        candidate = video_dir / f"{video_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise MissingSample(video_dir / f"{video_id}.mp4", "video file")


class MsrvttDataset(Dataset):
    """Decoded clips with captions, one item per video (`unit='video'`) or per caption.

    An item is a dict: frames (T x H x W x 3 uint8 tensor, or `transform(frames)`),
    frame_mask (T bool; with `pad=True` frames are zero-padded to `max_frames` so
    batches stack), timestamps, video_id, index (into `self.videos`), and `captions`
    (tuple) for video units or `caption` (str, through `text_transform`) for caption units.
    Missing or corrupt videos give None and are counted in `self.skips`.
    """

    def __init__(self, video_dir: str | os.PathLike[str], annotations: str | os.PathLike[str],
                 split: str | None = None, fps: float | None = 1.0, max_frames: int = 12,
                 unit: Literal["video", "caption"] = "video", pad: bool = True,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 text_transform: Callable[[str], Any] | None = None):
        self.video_dir = Path(video_dir)
        if not self.video_dir.is_dir():
            raise UserError(f"video folder not found: {self.video_dir}; pass the folder of VIDEO_ID.mp4 files")
        if unit not in ("video", "caption"):
            raise UserError(f"unit must be 'video' or 'caption', got {unit!r}")
        self.videos = load_msrvtt(annotations, split)
        if not self.videos:
            raise UserError(f"no videos in {annotations}" + (f" for split {split!r}" if split else ""))
        self.fps, self.max_frames, self.unit, self.pad = fps, max_frames, unit, pad
        self.transform, self.text_transform = transform, text_transform
        self.skips = SkipCounter(f"msrvtt:{Path(annotations).name}")
        # (caption, video index) for every caption: the text side of retrieval.
        self.caption_index: tuple[tuple[str, int], ...] = tuple(
            (c, i) for i, v in enumerate(self.videos) for c in v.captions)

    def __len__(self) -> int:
        return len(self.caption_index) if self.unit == "caption" else len(self.videos)

    def _clip(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frames, times = read_video_frames(find_video(self.video_dir, video_id), self.fps, self.max_frames)
        clip = torch.from_numpy(frames)
        clip = self.transform(clip) if self.transform else clip
        n = clip.shape[0]
        mask = torch.ones(n, dtype=torch.bool)
        stamps = torch.from_numpy(times)
        if self.pad and n < self.max_frames:
            extra = self.max_frames - n
            clip = torch.cat([clip, clip.new_zeros((extra, *clip.shape[1:]))])
            mask = torch.cat([mask, torch.zeros(extra, dtype=torch.bool)])
            stamps = torch.cat([stamps, stamps.new_zeros(extra)])
        return clip, mask, stamps

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if self.unit == "caption":
            caption, vid_index = self.caption_index[index]
        else:
            caption, vid_index = None, index
        entry = self.videos[vid_index]
        clip = self.skips.attempt(entry.video_id, lambda: self._clip(entry.video_id))
        if clip is None:
            return None
        frames, mask, stamps = clip
        item: dict[str, Any] = {"frames": frames, "frame_mask": mask, "timestamps": stamps,
                                "video_id": entry.video_id, "index": vid_index}
        if caption is None:
            item["captions"] = entry.captions
        else:
            item["caption"] = self.text_transform(caption) if self.text_transform else caption
        return item


def collate_clips(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack frames/masks of the non-skipped items; ids, indices and caption lists stay lists."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
