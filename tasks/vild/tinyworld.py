"""The tiny world as an open-vocabulary detection benchmark: scenes exported to COCO
json (the real loaders read them), four shapes as base classes and two held out as
novel (their boxes removed from training, their names never in the training
vocabulary)."""
from __future__ import annotations

from pathlib import Path

from clipheads.core.engine.distributed import barrier, is_main_process
from clipheads.core.tinyworld.export import MANIFEST, export_tiny_world

BASE = ("circle", "square", "triangle", "star")
NOVEL = ("heart", "cross")


def tiny_world_coco(cache_root: Path, n_train: int, n_val: int, size: int) -> Path:
    """The exported tiny world for these sizes (made once, by rank 0, then reused)."""
    folder = Path(cache_root) / "tinyworld" / f"vild_{n_train}_{n_val}_{size}"
    if not (folder / MANIFEST).is_file() and is_main_process():
        export_tiny_world(folder, n_train=n_train, n_val=n_val, n_videos=0, size=size, overwrite=folder.exists())
    barrier()
    return folder
