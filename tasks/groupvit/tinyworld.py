"""The tiny world as a GroupViT benchmark: held-out scenes with their shape masks and
the label list [background, *shapes] (background decided by threshold, as in VOC)."""
from __future__ import annotations

from clipheads.core.segmentation.evaluation import EvalScene
from clipheads.core.tinyworld import CATEGORIES, make_scene, split_seeds

SCENE_SIZE = 96


def eval_labels() -> list[str]:
    return ["background", *CATEGORIES]


def eval_scenes(split: str, n: int, size: int = SCENE_SIZE) -> list[EvalScene]:
    """`n` scenes of `split` ('val' during training, 'test' for reported numbers)."""
    out = []
    for seed in split_seeds(split, n):
        scene = make_scene(seed, size)
        out.append(EvalScene(scene.image, scene.mask, f"{split}-{seed}"))
    return out
