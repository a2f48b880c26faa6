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
import numpy as np
import torch

from clipheads.core.data.video import read_video_frames
from clipheads.core.errors import UserError

SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM = 0, 1, 2


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


def read_clip(path: str | os.PathLike[str], max_frames: int = 12, slice_framepos: int = SLICE_UNIFORM,
              backend: str | None = None) -> tuple[np.ndarray, list[int]]:
    """(uint8 frames T x H x W x 3, their indices in presentation order) with the official
    sampling, read by the core video reader (decord when importable, PyAV otherwise)."""
    picked: list[int] = []

    def pick(times: list[float], rate: float) -> list[int]:
        picked[:] = sample_indices(len(times), rate, max_frames, slice_framepos)
        order = sorted(range(len(times)), key=times.__getitem__)   # decode order -> presentation order
        return [order[i] for i in picked]

    frames, _ = read_video_frames(path, pick=pick, backend=backend)
    return frames, list(picked)


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
