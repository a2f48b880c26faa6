"""Config schema of the `groupvit` task (torch-free: the CLI reads it for `--help`).

Two models share the task: `official` (the paper's GroupViT trained from scratch:
its own ViT with grouping stages, its own text transformer, projectors) and `head`
(the default: grouping stages over the frozen backbone's patch tokens, groups
embedded in the CLIP joint space). The YAML files in configs/groupvit/ pick one run.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field

from clipheads.core.config import Check, checked
from clipheads.core.engine import TrainConfig
from clipheads.core.errors import UserError
from clipheads.core.task import TaskConfig

MODELS = ("head", "official")
SOURCES = ("tiny-world", "shards")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _check_stages(where: str, depths: list[int], heads: list[int], tokens: list[int],
                  outputs: list[int]) -> None:
    """GroupViT's stage lists: one depth/heads/group-token count per stage, one output
    group count per grouping block (every stage but the last), the last without tokens."""
    n = len(depths)
    if n < 2 or len(heads) != n or len(tokens) != n or len(outputs) != n - 1:
        raise UserError(f"{where}: depths, num_heads and num_group_tokens need one entry per stage "
                        f"(>= 2 stages) and num_output_groups one fewer; got {len(depths)}, "
                        f"{len(heads)}, {len(tokens)} and {len(outputs)}")
    if tokens[-1] != 0 or any(t < 1 for t in tokens[:-1]) or any(o < 1 for o in outputs):
        raise UserError(f"{where}: every stage but the last needs group tokens >= 1 (the last 0) "
                        f"and num_output_groups >= 1; got {tokens} and {outputs}")


@dataclass
class OfficialModel:
    """The paper's architecture (NVlabs/GroupViT `MultiLabelContrastive`): GroupViT-S
    image encoder, a CLIP-style text transformer trained from scratch (no projection
    matrix: EOT token -> projector), Conv1d/BN/ReLU/Conv1d projectors."""

    image_size: int = checked(224, ge=8)
    patch_size: int = checked(16, choices=(4, 8, 16))
    embed_dim: int = checked(384, ge=1)
    depths: list[int] = checked(default_factory=lambda: [6, 3, 3], each=Check(ge=0))
    num_heads: list[int] = checked(default_factory=lambda: [6, 6, 6], each=Check(ge=1))
    num_group_tokens: list[int] = checked(default_factory=lambda: [64, 8, 0], each=Check(ge=0))
    num_output_groups: list[int] = checked(default_factory=lambda: [64, 8], each=Check(ge=1))
    context_length: int = checked(77, ge=2)
    vocab_size: int = checked(49408, ge=2)
    text_width: int = checked(256, ge=1)
    text_layers: int = checked(12, ge=1)
    text_heads: int = checked(4, ge=1)          # the official code uses width // 64
    output_dim: int = checked(256, ge=1)
    proj_hidden: int = checked(4096, ge=1)
    multi_label: int = checked(3, ge=0)         # noun prompts per caption; 0 = no multi-label loss
    contrast_temperature: float = checked(0.07, gt=0.0)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def validate(self) -> "OfficialModel":
        _check_stages("official", self.depths, self.num_heads, self.num_group_tokens, self.num_output_groups)
        if self.embed_dim % max(self.num_heads) or self.text_width % self.text_heads:
            raise UserError("official: embed_dim must divide by num_heads and text_width by text_heads")
        if self.image_size % self.patch_size:
            raise UserError(f"official.image_size={self.image_size} must be a multiple of "
                            f"patch_size={self.patch_size}")
        return self


@dataclass
class HeadModel:
    """Grouping stages over the frozen backbone's patch tokens (`tap`: which block's
    tokens; -1 = the last), projected to `width`; group features are mapped into the
    CLIP joint space, where the text bank's label embeddings live.

    `num_output_groups[-1]` is the number of final groups the head is trained with; at
    inference any smaller number can be asked for (`--groups`): the head keeps the
    groups that cover most of the image (`groups_min` is the smallest number seen in
    training, which samples a count per step so every count is in distribution).

    `embed`: how a group gets its CLIP-space embedding. `groups` projects the final group
    feature, as the official model does (its query carries what it attended to anywhere
    in the image); `pooled` (default) projects the mean of the tokens the group was
    assigned (hard, straight-through), so a group's embedding says what is *in* it and a
    caption's nouns can only be matched by grouping each object's tokens together.

    `image_embed` (with `pooled`): the image embedding is the mean of the group embeddings
    (`groups`) or the projection of the mean token feature (`tokens`: the caption losses
    then do not depend on the partition). `assign`: the first stage's assignment is
    GroupViT's learned query-key attention (`learned`) or soft k-means over the frozen
    tokens plus grid position, seeded on a square grid (`kmeans`, `kmeans.py`)."""

    width: int = checked(256, ge=8)
    tap: int = -1
    depths: list[int] = checked(default_factory=lambda: [2, 1, 1], each=Check(ge=0))
    num_heads: list[int] = checked(default_factory=lambda: [4, 4, 4], each=Check(ge=1))
    num_group_tokens: list[int] = checked(default_factory=lambda: [32, 8, 0], each=Check(ge=0))
    num_output_groups: list[int] = checked(default_factory=lambda: [32, 8], each=Check(ge=1))
    groups_min: int = checked(4, ge=1)
    proj_hidden: int = checked(1024, ge=1)
    input_size: int | None = checked(None, ge=8)   # training resolution; None = the backbone's own
    embed: str = checked("pooled", choices=("pooled", "groups"))
    image_embed: str = checked("groups", choices=("groups", "tokens"))
    assign: str = checked("learned", choices=("learned", "kmeans"))
    kmeans_position: float = checked(0.5, ge=0.0)   # weight of the grid position next to the unit features
    kmeans_iters: int = checked(5, ge=0)
    kmeans_scale: float = checked(20.0, gt=0.0)      # logits = -scale x squared distance

    def validate(self) -> "HeadModel":
        _check_stages("head", self.depths, self.num_heads, self.num_group_tokens, self.num_output_groups)
        if self.width % max(self.num_heads):
            raise UserError(f"head.width={self.width} must divide by every num_heads entry")
        if self.image_embed == "tokens" and self.embed != "pooled":
            raise UserError("head.image_embed=tokens needs head.embed=pooled (the per-token features)")
        if self.assign == "kmeans" and math.isqrt(self.num_group_tokens[0]) ** 2 != self.num_group_tokens[0]:
            raise UserError(f"head.assign=kmeans seeds its groups on a square grid: head.num_group_tokens[0]="
                            f"{self.num_group_tokens[0]} is not a square number (e.g. 9, 16, 25)")
        if self.groups_min > self.num_output_groups[-1]:
            raise UserError(f"head.groups_min={self.groups_min} exceeds the head's "
                            f"{self.num_output_groups[-1]} output groups")
        return self


@dataclass
class SegmentConfig:
    """Zero-shot segmentation, as the official evaluation does it: resize the short side
    to `short_side`, slide `crop` windows with `stride` (0 = whole image), chain the soft
    assignments, argmax to groups, label each group among the image's `top_k` classes,
    and call a pixel background when its label's probability is below the threshold."""

    short_side: int = checked(448, ge=0)     # 0 = keep the input size
    crop: int = checked(448, ge=0)           # 0 = whole-image inference
    stride: int = checked(224, ge=1)
    top_k: int = checked(5, ge=1)
    bg_thresh: float = checked(0.95, ge=0.0, le=1.0)
    template: str = "a photo of a {}."

    def validate(self) -> "SegmentConfig":
        if self.crop and self.stride > self.crop:
            raise UserError(f"segment.stride={self.stride} exceeds segment.crop={self.crop}; windows "
                            "would leave gaps")
        return self


@dataclass
class GroupViTData:
    """Image-text pairs: the tiny-world generator (masks never used in training) or
    webdataset shards (img2dataset layout). Noun prompts for the multi-label loss come
    from `nouns`: `vocabulary` (words of the caption found in `noun_words`, or in the
    tiny world's shape names) or `nltk` (the official POS tagger; needs its data)."""

    source: str = checked("tiny-world", choices=SOURCES)
    shards: str | None = None
    shuffle_buffer: int = checked(1000, ge=0)
    shard_samples: int | None = checked(None, ge=1)
    n_train: int = checked(8000, ge=1)
    scene_size: int = checked(96, ge=16)
    single_fraction: float = checked(0.3, ge=0.0, le=1.0)
    render_workers: int = checked(2, ge=0)
    nouns: str = checked("vocabulary", choices=("vocabulary", "nltk"))
    noun_words: list[str] = field(default_factory=list)
    prompt_templates: str = "imagenet80"
    augment: str = checked("center", choices=("center", "deit"))  # deit: the paper's timm DeiT augmentation (shards)
    n_val: int = checked(48, ge=1)            # held-out tiny-world scenes for the mIoU during training
    n_test: int = checked(96, ge=1)           # test scenes of the final report

    def require_source(self) -> "GroupViTData":
        """At training time (a paper config names no shard path of yours)."""
        if self.source == "shards" and not self.shards:
            raise UserError("data.source=shards needs data.shards, e.g. "
                            "--set 'data.shards=data/train-{000000..000009}.tar'")
        return self


@dataclass
class GroupViTConfig(TaskConfig):
    model: str = checked("head", choices=MODELS)
    head: HeadModel = field(default_factory=HeadModel)
    official: OfficialModel = field(default_factory=OfficialModel)
    checkpoint: str | None = None              # trained head folder / official .pth; None = bundled
    multi_label_weight: float = checked(1.0, ge=0.0)
    group_noun_weight: float = checked(0.0, ge=0.0)   # not in the paper: nouns matched to single groups
    group_mil_weight: float = checked(0.0, ge=0.0)    # not in the paper: no group may look like an absent noun
    gumbel_noise: bool = True   # training assignments with Gumbel noise (the paper); off = hard argmax
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    data: GroupViTData = field(default_factory=GroupViTData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_steps=100, schedule="cosine",
        clip_grad=5.0, eval_every=500, ckpt_every=500, log_every=50))

    def validate(self) -> "GroupViTConfig":
        (self.official if self.model == "official" else self.head).validate()
        self.segment.validate()
        return self
