"""Pictures of videos: a row of sampled frames (what a search result looks like)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipheads.core.atomic import atomic_path

from .frames import read_clip


def frame_row(video: Path, out: Path, frames: int = 6, height: int = 64) -> Path:
    """`frames` evenly spaced frames of `video` side by side, `height` pixels high, as PNG."""
    clip, _ = read_clip(video, max_frames=frames)
    h, w = clip.shape[1:3]
    width = max(1, round(w * height / h))
    tiles = [Image.fromarray(f).resize((width, height), Image.BILINEAR) for f in clip]
    row = Image.fromarray(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    with atomic_path(out) as tmp:
        row.save(tmp, format="PNG")
    return out
