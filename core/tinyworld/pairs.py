"""Captioned tiny-world images for image-text training, rendered once up front.

Each pair comes from one seed (so every worker, rank and resume sees the same pairs):
a share `single_fraction` of one-object images captioned by their class name, the rest
scenes of 2-4 objects with their full caption, each wrapped in one of a few caption
forms. Rendering runs in `workers` processes; training then reads memory.
"""
from __future__ import annotations

import numpy as np

from .scene import make_scene, make_single
from .splits import split_seeds
from .vocab import COLOURS, SHAPES

TRAIN_SINGLE_EXTENT = (0.3, 0.8)  # wider than held-out probes: big and small objects alike
CAPTION_FORMS = ("{}", "a photo of {}.", "an image of {}.", "a picture of {}.", "{}.")


def render_pair(args: tuple[int, int, float]) -> tuple[np.ndarray, str]:
    """(image uint8 HxWx3, caption) of one seed."""
    seed, size, single_fraction = args
    rng = np.random.default_rng(seed + 7)
    if rng.random() < single_fraction:
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        scene = make_single(seed, colour, shape, size, extent=TRAIN_SINGLE_EXTENT) if rng.random() < 0.5 else \
            make_scene(seed, size, n_objects=1)
    else:
        scene = make_scene(seed, size, n_objects=(2, 4))
    form = CAPTION_FORMS[rng.integers(len(CAPTION_FORMS))]
    return np.asarray(scene.image, dtype=np.uint8), form.format(scene.caption)


def render_pairs(n: int, size: int, single_fraction: float = 0.5, split: str = "train",
                 workers: int = 0) -> tuple[np.ndarray, list[str]]:
    """`n` pairs of `split`: images [n, size, size, 3] uint8 and their captions."""
    jobs = [(s, size, single_fraction) for s in split_seeds(split, n)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            pairs = pool.map(render_pair, jobs, chunksize=256)
    else:
        pairs = [render_pair(j) for j in jobs]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]
