"""Config schema of the `lseg` task.

Defaults follow the paper (DPT decoder over ViT-L/16 taps, 256 features, SGD + poly,
480 crops, multi-scale evaluation); the YAML files in configs/lseg/ pick the settings of
one run (paper ADE20K, frozen CLIP ViT-B/16, tiny world).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from clipheads.core.config import Check, checked
from clipheads.core.engine import TrainConfig
from clipheads.core.errors import UserError
from clipheads.core.task import TaskConfig

ENCODERS = ("clip", "timm")
READOUTS = ("ignore", "add", "project")
ACTIVATIONS = ("relu", "lrelu", "tanh")
HELDOUT_MODES = ("drop", "ignore")


@dataclass
class TimmConfig:
    """The paper's trainable image encoder: a timm ViT built with `pretrained=False`
    (nothing is downloaded) and optionally loaded from a local weights file."""

    name: str = "vit_large_patch16_384"
    weights: str | None = None            # timm state dict (.pth/.bin/.safetensors); None = random init
    kwargs: dict[str, Any] = field(default_factory=dict)   # extra create_model kwargs (tests: small ViTs)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    trainable: bool = True                # the paper fine-tunes the whole ViT


@dataclass
class ModelConfig:
    """Architecture of the head. `layers`, `channels` and `strides` have one entry per
    tapped block; strides are output strides w.r.t. the input (the paper: 4, 8, 16, 32)."""

    encoder: str = checked("clip", choices=ENCODERS)  # clip: the core FrozenCLIP; timm: a timm ViT
    layers: list[int] = field(default_factory=lambda: [5, 11, 17, 23])
    readout: str = checked("project", choices=READOUTS)
    channels: list[int] = checked(default_factory=lambda: [256, 512, 1024, 1024], each=Check(ge=1))
    strides: list[int] = checked(default_factory=lambda: [4, 8, 16, 32], each=Check(ge=1))
    features: int = checked(256, ge=1)
    use_bn: bool = True                    # BatchNorm in the residual conv units (LSegNet)
    arch_option: int = checked(0, choices=(0, 1, 2))  # 0 none, 1 bottleneck, 2 depthwise spatial regularisation
    block_depth: int = checked(0, ge=0)
    activation: str = checked("lrelu", choices=ACTIVATIONS)  # of the spatial regularisation blocks
    temperature: float = checked(0.07, gt=0.0)  # logits = cos / temperature (fixed, not learned)
    unlock: list[str] = field(default_factory=list)   # FrozenCLIP.unlock groups to fine-tune
    timm: TimmConfig = field(default_factory=TimmConfig)

    def validate(self) -> "ModelConfig":
        n = len(self.layers)
        if self.encoder not in ENCODERS:
            raise UserError(f"model.encoder={self.encoder!r}: use one of {', '.join(ENCODERS)}")
        if n == 0 or len(self.channels) != n or len(self.strides) != n:
            raise UserError(f"model.layers, model.channels and model.strides need one entry per "
                            f"tapped block; got {n}, {len(self.channels)} and {len(self.strides)}")
        if self.readout not in READOUTS:
            raise UserError(f"model.readout={self.readout!r}: use one of {', '.join(READOUTS)}")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"model.activation={self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        if self.arch_option not in (0, 1, 2):
            raise UserError(f"model.arch_option={self.arch_option}: use 0 (none), 1 (bottleneck) "
                            "or 2 (depthwise)")
        if self.block_depth < 0 or self.features < 1 or min(self.channels) < 1:
            raise UserError("model.block_depth must be >= 0 and model.features/channels >= 1")
        if not self.temperature > 0:
            raise UserError(f"model.temperature must be > 0, got {self.temperature}")
        if self.unlock and self.encoder != "clip":
            raise UserError("model.unlock applies to the clip encoder; for timm use model.timm.trainable")
        for group in self.unlock:
            # label embeddings are encoded once and cached, so only the image tower can learn
            if group != "visual" and not group.startswith("visual.last:"):
                raise UserError(f"model.unlock group '{group}': LSeg fine-tunes only the image tower; "
                                "use 'visual' or 'visual.last:N'")
        return self


@dataclass
class DataConfig:
    """Where training/evaluation images come from.

    `tiny-world`: scenes rendered from the generator's seeds, masks by shape; the shapes in
    `heldout` never get a training label (`drop`: scenes showing them are left out;
    `ignore`: their pixels are ignored). `folder`: an ADE20K-layout directory
    (images/<split>/NAME.jpg + annotations/<split>/NAME.png); class names come from
    `labels`, `labels_file`, or a labels.txt / objectInfo150 file in the root."""

    source: str = checked("tiny-world", choices=("tiny-world", "folder"))
    root: str | None = None
    train_split: str = "training"
    val_split: str = "validation"
    labels: list[str] = field(default_factory=list)
    labels_file: str | None = None
    reduce_zero_label: bool = True         # ADE20K: 0 = ignore, k -> k-1
    ignore_index: int = checked(255, ge=0, le=255)
    n_train: int = checked(2000, ge=1)
    n_val: int = checked(64, ge=1)
    scene_size: int = checked(128, ge=16)
    background: str = "background"
    heldout: list[str] = field(default_factory=list)
    heldout_mode: str = checked("drop", choices=HELDOUT_MODES)
    render_workers: int = checked(2, ge=0)

    def validate(self) -> "DataConfig":
        if self.source not in ("tiny-world", "folder"):
            raise UserError(f"data.source={self.source!r}: use tiny-world or folder")
        if self.heldout_mode not in HELDOUT_MODES:
            raise UserError(f"data.heldout_mode={self.heldout_mode!r}: use drop or ignore")
        if not 0 <= self.ignore_index <= 255:
            raise UserError(f"data.ignore_index must be in 0..255, got {self.ignore_index}")
        return self


@dataclass
class AugmentConfig:
    """Training crops: long side resized to base_size x U(scale_min, scale_max), random
    horizontal flip, padded (mask: ignore) and randomly cropped to crop_size."""

    base_size: int = checked(520, ge=1)
    crop_size: int = checked(480, ge=1)
    scale_min: float = checked(0.5, gt=0.0)
    scale_max: float = checked(2.0, gt=0.0)
    flip: bool = True

    def validate(self) -> "AugmentConfig":
        if self.scale_min > self.scale_max:
            raise UserError(f"augment.scale_min={self.scale_min} > augment.scale_max={self.scale_max}; "
                            "the random scale is drawn from [scale_min, scale_max]")
        return self


@dataclass
class InferConfig:
    """Single-scale: long side resized to `size`. Multi-scale: the official evaluator (long
    side ceil(base_size x scale), align_corners bilinear resize, sliding crop_size windows at
    `stride` (official: int(crop_size x 2/3)), horizontal flip, each scale's scores resized to
    the input size and summed). Sizes left at null come from the head's own description
    (lseg_head.json)."""

    size: int | None = checked(None, ge=1)
    multi_scale: bool = False
    scales: list[float] = checked(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
                                  min_len=1, each=Check(gt=0.0))
    base_size: int | None = checked(None, ge=1)
    crop_size: int | None = checked(None, ge=1)
    stride: int | None = checked(None, ge=1)
    flip: bool = True
    batch_size: int = checked(2, ge=1)     # windows per forward pass (x2 with flip)
    max_elements: int = checked(1 << 25, ge=1)           # cap on label x pixel floats when upsampling to the input

    def resolved(self, defaults: dict[str, Any]) -> "InferConfig":
        """A copy with null sizes taken from `defaults` (a head's `infer` entry)."""
        out = dataclasses.replace(self)
        for name in ("size", "base_size", "crop_size", "stride"):
            if getattr(out, name) is None:
                value = defaults.get(name)
                if value is None:
                    raise UserError(f"infer.{name} is not set and the head does not record it; "
                                    f"pass --set infer.{name}=N")
                setattr(out, name, int(value))
        return out


@dataclass
class EvalConfig:
    """Evaluation sets: tiny-world test scenes, or PASCAL-5i zero-shot episodes."""

    n_scenes: int = checked(200, ge=1)
    folds: list[int] = checked(default_factory=lambda: [0, 1, 2, 3], min_len=1, each=Check(choices=(0, 1, 2, 3)))
    episodes: int = checked(1000, ge=1)    # per fold, as HSNet/LSeg (query list cycled)
    limit: int | None = checked(None, ge=1)              # evaluate at most this many images (folder data)


@dataclass
class LSegConfig(TaskConfig):
    head: str | None = None                # trained head folder/file; None: bundled tiny head
    templates: str | None = None           # a template set name or a format string with '{}'
    head_lr_mult: float = checked(10.0, gt=0.0)            # decoder/head lr = train.lr x this (the paper: 10)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=303_150, batch_size=16, lr=0.004, weight_decay=1e-4, optimizer="sgd",
        momentum=0.9, schedule="poly", poly_power=0.9, eval_every=0, ckpt_every=5000))
