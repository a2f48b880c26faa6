"""The tiny world as a text-video retrieval benchmark: exported moving-shape clips
(real mp4 files, read by the same loaders as MSR-VTT), captions that name each object's
motion. Train and test seeds never overlap; validation is the last `n_val` train clips."""
from __future__ import annotations

from pathlib import Path

from clipheads.core.engine.distributed import barrier, is_main_process
from clipheads.core.tinyworld.export import MANIFEST, export_tiny_world

VIDEO_FRAMES = 16
VIDEO_FPS = 1.0     # 16 s clips: the official 1 fps sampling sees all 16 frames (thinned to 12)


def tiny_world_videos(cache_root: Path, n_train: int, n_test: int, size: int) -> Path:
    """The exported clips for these sizes (made once, by rank 0, then reused)."""
    folder = Path(cache_root) / "tinyworld" / f"clip4clip_{n_train}_{n_test}_{size}"
    if not (folder / MANIFEST).is_file() and is_main_process():
        export_tiny_world(folder, n_train=1, n_val=0, n_videos=n_train, n_test_videos=n_test, size=size,
                          video_frames=VIDEO_FRAMES, video_fps=VIDEO_FPS, overwrite=folder.exists())
    barrier()
    return folder
