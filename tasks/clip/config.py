"""Config schema of the `clip` task (contrastive image-text training)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clipheads.core.engine import TrainConfig
from clipheads.core.errors import UserError
from clipheads.core.task import TaskConfig


def _tiny_model() -> dict[str, Any]:
    return {
        "embed_dim": 128, "quick_gelu": False,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32,
                       "patch_size": 8, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4,
                     "layers": 3},
    }


SOURCES = ("tiny-world", "shards")


@dataclass
class ClipData:
    """Where image-text pairs come from: the tiny-world generator (by seed, so every
    worker and every resume sees the same pairs), or webdataset tar shards in img2dataset
    layout (`shards`: a path or brace pattern, e.g. data/train-{000000..000099}.tar),
    streamed, split across ranks and workers, and resumed exactly."""

    source: str = "tiny-world"
    shards: str | None = None      # source=shards: the shard path pattern
    shuffle_buffer: int = 1000     # source=shards: samples in the shuffle buffer (0 = stream order)
    shard_samples: int | None = None  # source=shards: samples per epoch, for progress (else _stats.json)
    n_train: int = 20000
    scene_size: int = 96           # held-out evaluation scenes (resized by the model's preprocessing)
    render_workers: int = 2        # processes that render the training pairs up front
    single_fraction: float = 0.5   # share of one-object scenes (their caption is a class name)
    eval_per_class: int = 8        # held-out single-object images per class for zero-shot eval

    def validate(self) -> "ClipData":
        if self.source not in SOURCES:
            raise UserError(f"data.source={self.source!r}: use {' or '.join(SOURCES)}")
        if self.source == "shards" and not self.shards:
            raise UserError("data.source=shards needs data.shards, e.g. "
                            "--set 'data.shards=data/train-{000000..000009}.tar'")
        if self.shuffle_buffer < 0:
            raise UserError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        return self


@dataclass
class ClipConfig(TaskConfig):
    model: dict[str, Any] = field(default_factory=_tiny_model)
    preprocess: dict[str, Any] = field(default_factory=lambda: {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
        "resize_mode": "shortest"})
    data: ClipData = field(default_factory=ClipData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=6000, batch_size=128, lr=1e-3, weight_decay=0.1, warmup_steps=200,
        schedule="cosine", clip_grad=1.0, eval_every=500, ckpt_every=500, log_every=50))
