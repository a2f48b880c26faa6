"""Config schema of the `clip` task (contrastive image-text training)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clipheads.core.config import checked
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
POSITIVE_MODEL_KEYS = ("image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio",
                       "context_length", "vocab_size", "heads")


@dataclass
class ClipData:
    """Where image-text pairs come from: the tiny-world generator (by seed, so every
    worker and every resume sees the same pairs), or webdataset tar shards in img2dataset
    layout (`shards`: a path or brace pattern, e.g. data/train-{000000..000099}.tar),
    streamed, split across ranks and workers, and resumed exactly."""

    source: str = checked("tiny-world", choices=SOURCES)
    shards: str | None = None      # source=shards: the shard path pattern
    shuffle_buffer: int = checked(1000, ge=0)   # source=shards: samples in the shuffle buffer (0 = stream order)
    shard_samples: int | None = checked(None, ge=1)  # source=shards: samples per epoch, for progress (else _stats.json)
    n_train: int = checked(20000, ge=1)
    scene_size: int = checked(96, ge=16)   # held-out evaluation scenes (resized by the model's preprocessing)
    render_workers: int = checked(2, ge=0)  # processes that render the training pairs up front
    single_fraction: float = checked(0.5, ge=0.0, le=1.0)  # share of one-object scenes (captioned by class name)
    eval_per_class: int = checked(8, ge=1)  # held-out single-object images per class for zero-shot eval

    def validate(self) -> "ClipData":
        if self.source == "shards" and not self.shards:
            raise UserError("data.source=shards needs data.shards, e.g. "
                            "--set 'data.shards=data/train-{000000..000009}.tar'")
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

    def validate(self) -> "ClipConfig":
        """The open_clip model mapping and the preprocessing, checked before anything is built."""
        if not _positive_int(self.model.get("embed_dim")):
            raise UserError(f"model.embed_dim={self.model.get('embed_dim')!r}: must be an integer >= 1")
        for tower in ("vision_cfg", "text_cfg"):
            cfg = self.model.get(tower)
            if not isinstance(cfg, dict):
                raise UserError(f"model.{tower} must be a mapping of open_clip {tower} fields")
            for key in POSITIVE_MODEL_KEYS:
                value = cfg.get(key)
                if key in cfg and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                    raise UserError(f"model.{tower}.{key}={value!r}: must be a number > 0")
        for key in ("mean", "std"):
            value = self.preprocess.get(key)
            if not (isinstance(value, list) and len(value) == 3
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise UserError(f"preprocess.{key}={value!r}: must be 3 numbers (one per RGB channel)")
        if any(v <= 0 for v in self.preprocess["std"]):
            raise UserError(f"preprocess.std={self.preprocess['std']!r}: every entry must be > 0")
        return self


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
