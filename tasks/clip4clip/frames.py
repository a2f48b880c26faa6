"""CLIP4Clip's frame sampling, decoded by decord or PyAV (the same frames from both).

The official rule works on frame *indices*: with `rate = int(fps)` (truncated, at least
1), it keeps frame 0, rate, 2 x rate, ... (the first frame of every second); when that
gives more than `max_frames`, `slice_framepos` keeps the head (0), the tail (1) or
`linspace(0, n - 1, max_frames)` (2, the default). A video shorter than a second gives
its first frame. Decoding failures raise `CorruptSample` (`MissingSample` when absent),
which datasets and the indexer skip and count instead of feeding zeros to the model.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.data.video import video_backend
from clipheads.core.errors import UserError

SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM = 0, 1, 2
_TRUNCATION_SLACK = 2   # a container promising more frames than this beyond its packets is cut


def sample_indices(n_frames: int, fps: float, max_frames: int = 12, slice_framepos: int = SLICE_UNIFORM
                   ) -> list[int]:
    """Frame indices the official CLIP4Clip loader reads for a video of `n_frames` at `fps`."""
    if max_frames < 1:
        raise UserError(f"max_frames must be >= 1, got {max_frames}")
    if slice_framepos not in (SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM):
        raise UserError(f"slice_framepos must be 0 (head), 1 (tail) or 2 (uniform), got {slice_framepos}")
    if n_frames < 1:
        return []
    rate = max(1, int(fps))
    kept = list(range(0, n_frames, rate))
    if len(kept) <= max_frames:
        return kept
    if slice_framepos == SLICE_HEAD:
        return kept[:max_frames]
    if slice_framepos == SLICE_TAIL:
        return kept[-max_frames:]
    return [kept[i] for i in np.linspace(0, len(kept) - 1, num=max_frames, dtype=int)]


def _decord_frames(path: Path, max_frames: int, slice_framepos: int) -> tuple[np.ndarray, list[int]]:
    import decord
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        idx = sample_indices(len(vr), vr.get_avg_fps(), max_frames, slice_framepos)
        if not idx:
            raise CorruptSample(path, "video has no frames")
        return vr.get_batch(idx).asnumpy(), idx
    except CorruptSample:
        raise
    except Exception as exc:  # decord raises bare RuntimeError / DECORDError
        raise CorruptSample(path, f"video decoding failed ({exc})") from exc


def _pyav_frames(path: Path, max_frames: int, slice_framepos: int) -> tuple[np.ndarray, list[int]]:
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CorruptSample(path, "no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            promised = int(stream.frames or 0)
            # Count packets (no decoding): container frame counts are missing or wrong often.
            n = sum(1 for p in container.demux(stream) if p.size > 0)
        if promised and n + _TRUNCATION_SLACK < promised:
            raise CorruptSample(path, f"truncated video: {n} of {promised} frames present")
        idx = sample_indices(n, fps, max_frames, slice_framepos)
        if not idx:
            raise CorruptSample(path, "video has no frames")
        wanted, got = set(idx), {}
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= idx[-1]:
                    break
    except CorruptSample:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as exc:
        raise CorruptSample(path, f"video decoding failed ({exc})") from exc
    if len(got) < len(idx):
        raise CorruptSample(path, f"{len(idx) - len(got)} sampled frames could not be decoded (truncated?)")
    return np.stack([got[i] for i in idx]), idx


def read_clip(path: str | os.PathLike[str], max_frames: int = 12, slice_framepos: int = SLICE_UNIFORM,
              backend: str | None = None) -> tuple[np.ndarray, list[int]]:
    """(uint8 frames T x H x W x 3, their indices) with the official sampling; by default
    decord when importable (PyAV gets the files decord cannot read), else PyAV."""
    p = Path(path)
    if not p.exists():
        raise MissingSample(p, "video file")
    if not p.is_file() or p.stat().st_size == 0:
        raise CorruptSample(p, "empty or not a file")
    if backend is None and video_backend() == "decord":
        try:
            return _decord_frames(p, max_frames, slice_framepos)
        except CorruptSample:   # decord 0.6 fails on some valid files (tiny frames: 48x32, 2x2): PyAV decides
            return _pyav_frames(p, max_frames, slice_framepos)
    backend = backend or "pyav"
    if backend == "decord":
        return _decord_frames(p, max_frames, slice_framepos)
    if backend == "pyav":
        return _pyav_frames(p, max_frames, slice_framepos)
    raise UserError(f"video backend {backend!r}: use 'decord' or 'pyav'")


class FrameTransform:
    """uint8 [T, H, W, 3] -> float [T, 3, S, S]: bicubic resize of the short side to S,
    centre crop, the backbone's mean/std (the official 224 pipeline at the backbone's size)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        from torchvision.transforms import v2
        self.size = size
        self.ops = v2.Compose([
            v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        clip = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return self.ops(clip)


def pad_frames(clip: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad [T, ...] to max_frames; the bool mask marks real frames."""
    n = clip.shape[0]
    mask = torch.zeros(max_frames, dtype=torch.bool)
    mask[:n] = True
    if n < max_frames:
        clip = torch.cat([clip, clip.new_zeros((max_frames - n, *clip.shape[1:]))])
    return clip[:max_frames], mask
