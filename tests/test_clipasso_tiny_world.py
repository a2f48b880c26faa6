"""With the bundled tiny CLIP, CLIPasso sketches of held-out tiny-world shapes are
classified by that CLIP as the right shape, far above chance and above random strokes.

The claim depends on the shipped weights, so they are checked too: the bundled tiny CLIP
classifies all 12 tiny-world images themselves correctly (measured: 1.00; sketches 0.67,
saliency init 0.17, random strokes 0.17 with 1 seed, 60 iterations). Weaker weights are a
regression and fail here; they are never skipped.
"""
from __future__ import annotations

import pytest

from clipheads.core.config import load_config, resolve_config_path
from clipheads.core.task import Context
from clipheads.tasks.clipasso import ClipassoConfig, ClipassoTask
from clipheads.tasks.clipasso.recognition import sketch_recognition


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_world_sketches_are_recognised(tmp_path) -> None:
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"), ["optim.seeds=1", "optim.iterations=60"])
    task = ClipassoTask(cfg, Context(cfg, cache_dir=str(tmp_path)))
    report = sketch_recognition(task.sketcher(), task.ctx.text_bank, per_shape=2)
    print(report)
    assert report["images"] == 12
    assert report["target_top1"] >= 11 / 12, (
        f"the bundled tiny CLIP classifies only {report['target_top1']:.2f} of the tiny-world images "
        "themselves (shipped weights measured 1.00): the weights regressed")
    assert report["sketch_top1"] >= 0.5  # 3x chance (1/6)
    assert report["sketch_top1"] >= report["random_top1"] + 0.25
    assert report["sketch_top1"] >= report["init_top1"] + 0.25  # the optimisation does the work
