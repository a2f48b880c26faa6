"""Config schema of the `vild` task (torch-free: the CLI reads it for `--help`).

The detector is torchvision's Mask R-CNN with ViLD's changes (class-agnostic box and
mask heads, a region-embedding head scored against text embeddings); `mode` picks the
paper's variant: `text` (ViLD-text), `image` (ViLD-image: distillation only), `vild`
(both, one head) or `ensemble` (ViLD-ensemble: a separate image-branch head).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from clipheads.core.config import Check, checked
from clipheads.core.engine import TrainConfig
from clipheads.core.errors import UserError
from clipheads.core.task import TaskConfig

MODES = ("text", "image", "vild", "ensemble")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "narrow")


@dataclass
class DetectorModel:
    """Mask R-CNN R-FPN with ViLD's heads. Defaults are the paper's LVIS R50 setting
    (tensorflow/tpu `vild_ensemble_resnet.yaml`), not torchvision's COCO defaults."""

    backbone: str = checked("resnet50", choices=BACKBONES)
    backbone_weights: str | None = None       # a torchvision weights name, e.g. IMAGENET1K_V1 (downloads)
    trainable_layers: int = checked(5, ge=0, le=5)
    narrow_widths: list[int] = checked(default_factory=lambda: [32, 64, 96, 128], each=Check(ge=1))  # backbone narrow
    narrow_blocks: list[int] = checked(default_factory=lambda: [1, 1, 1, 1], each=Check(ge=1))
    fpn_channels: int = checked(256, ge=1)     # the narrow backbone's FPN width (torchvision's ResNets: 256)
    anchor_sizes: list[int] = checked(default_factory=lambda: [32, 64, 128, 256, 512], each=Check(ge=1))
    aspect_ratios: list[float] = checked(default_factory=lambda: [0.5, 1.0, 2.0], each=Check(gt=0.0))
    min_size: int = checked(1024, ge=16)       # the transform's resize (short side)
    max_size: int = checked(1024, ge=16)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    conv_channels: int = checked(256, ge=1)    # box/mask head conv width
    box_convs: int = checked(4, ge=0)          # ViLD: 4 convs ...
    box_fcs: int = checked(2, ge=1)            # ... then 2 fcs of fc_dim (the official config's num_fcs)
    fc_dim: int = checked(1024, ge=1)
    mask: bool = True
    mask_convs: int = checked(4, ge=1)
    temperature: float = checked(100.0, gt=0.0)   # logits = cos x 100 (tau = 0.01)
    rpn_pre_nms_train: int = checked(2000, ge=1)
    rpn_post_nms_train: int = checked(1000, ge=1)
    rpn_pre_nms_test: int = checked(1000, ge=1)
    rpn_post_nms_test: int = checked(1000, ge=1)
    rois_per_image: int = checked(512, ge=1)
    positive_fraction: float = checked(0.25, gt=0.0, le=1.0)
    box_loss_beta: float = checked(1.0, gt=0.0)    # the official Huber delta of the box head
    score_threshold: float = checked(0.0, ge=0.0, le=1.0)
    nms_threshold: float = checked(0.5, gt=0.0, le=1.0)
    detections_per_image: int = checked(300, ge=1)

    def validate(self) -> None:
        if self.min_size > self.max_size:
            raise UserError(f"model.min_size={self.min_size} is larger than model.max_size={self.max_size}")
        if self.backbone == "narrow" and (len(self.narrow_widths) != 4 or len(self.narrow_blocks) != 4):
            raise UserError("model.narrow_widths and model.narrow_blocks need 4 entries (one per stage)")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise UserError("model.mean and model.std need 3 values each (std > 0)")


@dataclass
class ViLDHeadConfig:
    """What ViLD adds to the detector: which losses, how they mix at inference."""

    mode: str = checked("ensemble", choices=MODES)
    distill_weight: float = checked(0.5, ge=0.0)      # the official R50 setting
    distill_rois: int = checked(300, ge=1)            # M precomputed proposals per image
    ensemble_lambda: float = checked(2 / 3, ge=0.0, le=1.0)


SOURCES = ("tiny-world", "coco")
SPLITS = ("names", "lvis-frequency", "ovr-coco")


@dataclass
class ViLDData:
    """Training/validation data: COCO-format instances json + image folders (COCO, LVIS),
    or the tiny world exported to COCO json on first use (`source: tiny-world`)."""

    source: str = checked("tiny-world", choices=SOURCES)
    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    split: str = checked("names", choices=SPLITS)   # how base/novel are decided
    base: list[str] = field(default_factory=list)    # split: names
    novel: list[str] = field(default_factory=list)
    cache: str | None = None          # proposal cache folder (`vild precompute`); needed unless mode=text
    templates: str = "vild63"
    classifier_file: str | None = None    # the released clip_synonym_prompt.npy instead of the text bank
    rare_mask_file: str | None = None     # the released lvis_rare_masks.npy (novel = rare), with classifier_file
    n_train: int = checked(2000, ge=1)    # tiny world
    n_val: int = checked(100, ge=1)
    scene_size: int = checked(96, ge=32)
    max_val_images: int | None = None     # evaluate during training on at most this many images


@dataclass
class InferConfig:
    """What `vild infer` keeps (the detector itself keeps up to 300 with score > 0)."""

    score_threshold: float = checked(0.3, ge=0.0, le=1.0)
    max_detections: int = checked(100, ge=1)
    # The official postprocess option (false in its configs): softmax the text branch
    # without its background logit; it trades base precision for novel recall (docs/vild.md).
    discard_background: bool = False


@dataclass
class ViLDConfig(TaskConfig):
    model: DetectorModel = field(default_factory=DetectorModel)
    vild: ViLDHeadConfig = field(default_factory=ViLDHeadConfig)
    data: ViLDData = field(default_factory=ViLDData)
    infer: InferConfig = field(default_factory=InferConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: str | None = None

    def validate(self) -> "ViLDConfig":
        self.model.validate()
        self.train.validate()
        return self
