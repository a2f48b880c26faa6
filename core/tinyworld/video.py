"""Deterministic tiny-world videos: one or two shapes moving left/right/up/down.

The caption names each object's motion ("a red circle moving left"), so a text-video
model can only match it by looking at more than one frame. Objects keep their own
lane (they never touch), travel a clear distance, and stay fully inside the frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipheads.core.errors import UserError
from clipheads.core.tinyworld.background import make_background
from clipheads.core.tinyworld.render import composite, coverage, mask_box, shape_polygon
from clipheads.core.tinyworld.scene import MAX_RESTARTS, MIN_SIZE, article, jitter_rgb
from clipheads.core.tinyworld.vocab import COLOURS, SHAPES

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# Paraphrases give MSR-VTT-like multi-caption videos; index 0 is the canonical caption.
_TEMPLATES: tuple[str, ...] = ("{obj} moving {d}", "{obj} moves {d}", "{obj} going {d}")


@dataclass(frozen=True)
class Mover:
    """One moving object; `boxes` holds its visible (x0, y0, x1, y1) box per frame."""

    colour: str
    shape: str
    direction: str
    boxes: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class VideoClip:
    """uint8 frames (T, H, W, 3), the movers, and paraphrased captions (captions[0] == caption)."""

    seed: int
    frames: np.ndarray
    instance_masks: np.ndarray
    movers: tuple[Mover, ...]
    captions: tuple[str, ...]

    @property
    def caption(self) -> str:
        return self.captions[0]


def _trajectory(rng: np.random.Generator, size: int, r: float, direction: str, n: int) -> np.ndarray:
    """(n, 2) centres moving 35-55% of the side along `direction`, inside the frame."""
    travel = rng.uniform(0.35, 0.55) * size
    lo, hi = r + 1, size - r - 1
    travel = min(travel, hi - lo)
    dx, dy = _STEP[direction]
    start = np.array([rng.uniform(lo, hi), rng.uniform(lo, hi)])
    # Put the moving coordinate where the whole path fits.
    axis = 0 if dx else 1
    sign = dx if dx else dy
    start[axis] = rng.uniform(lo, hi - travel) if sign > 0 else rng.uniform(lo + travel, hi)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return start[None, :] + t * travel * np.array([dx, dy])[None, :]


def _apart(paths: list[np.ndarray], radii: list[float]) -> bool:
    if len(paths) < 2:
        return True
    dist = np.linalg.norm(paths[0] - paths[1], axis=1)
    return bool(dist.min() > radii[0] + radii[1] + 2)


def make_video(seed: int, n_frames: int = 16, size: int = 96) -> VideoClip:
    """A clip of 1-2 distinct shapes on a static background, each moving one way."""
    if size < MIN_SIZE or n_frames < 2:
        raise UserError(f"make_video needs size >= {MIN_SIZE} and n_frames >= 2, "
                        f"got size={size}, n_frames={n_frames}")
    rng = np.random.default_rng(seed)
    background = make_background(rng, size)
    n_obj = int(rng.integers(1, 3))
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    picks = [combos[int(i)] for i in rng.choice(len(combos), size=n_obj, replace=False)]
    for _restart in range(MAX_RESTARTS):  # same generator on retry: still a pure function of the seed
        specs, paths, radii = [], [], []
        for colour, shape in picks:
            r = rng.uniform(0.18, 0.3) * size / 2
            direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
            rot = float(rng.uniform(0, 360)) if shape != "circle" else 0.0
            specs.append((colour, shape, direction, rot, jitter_rgb(rng, colour)))
            paths.append(_trajectory(rng, size, r, direction, n_frames))
            radii.append(r)
        if _apart(paths, radii):
            break
    else:
        raise RuntimeError(f"tiny world: could not route {n_obj} movers apart (seed {seed}); "
                           "this is a generator bug, please report it")
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    masks = np.empty((n_frames, size, size), dtype=np.uint8)
    boxes: list[list[tuple[float, float, float, float]]] = [[] for _ in specs]
    for t in range(n_frames):
        layers = [(coverage(shape_polygon(shape, tuple(paths[i][t]), radii[i], rot), size), rgb)
                  for i, (colour, shape, _, rot, rgb) in enumerate(specs)]
        frames[t], masks[t] = composite(background, layers)
        for i in range(len(specs)):
            box = mask_box(masks[t] == i + 1)
            assert box is not None  # lanes never touch, so every object stays visible
            boxes[i].append(box)
    movers = tuple(Mover(colour=c, shape=s, direction=d, boxes=tuple(boxes[i]))
                   for i, (c, s, d, _, _) in enumerate(specs))
    captions = tuple(" and ".join(tpl.format(obj=f"{article(m.colour)} {m.colour} {m.shape}",
                                             d=m.direction) for m in movers)
                     for tpl in _TEMPLATES)
    return VideoClip(seed=seed, frames=frames, instance_masks=masks, movers=movers, captions=captions)
