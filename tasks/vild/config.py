"""Config schema of the `vild` task (torch-free: the CLI reads it for `--help`).

The detector is torchvision's Mask R-CNN with ViLD's changes (class-agnostic box and
mask heads, a region-embedding head scored against text embeddings); `mode` picks the
paper's variant: `text` (ViLD-text), `image` (ViLD-image: distillation only), `vild`
(both, one head) or `ensemble` (ViLD-ensemble: a separate image-branch head).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from clipheads.core.config import Check, checked
from clipheads.core.errors import UserError

MODES = ("text", "image", "vild", "ensemble")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass
class DetectorModel:
    """Mask R-CNN R-FPN with ViLD's heads. Defaults are the paper's LVIS R50 setting
    (tensorflow/tpu `vild_ensemble_resnet.yaml`), not torchvision's COCO defaults."""

    backbone: str = checked("resnet50", choices=BACKBONES)
    backbone_weights: str | None = None       # a torchvision weights name, e.g. IMAGENET1K_V1 (downloads)
    trainable_layers: int = checked(5, ge=0, le=5)
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
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise UserError("model.mean and model.std need 3 values each (std > 0)")


@dataclass
class ViLDHeadConfig:
    """What ViLD adds to the detector: which losses, how they mix at inference."""

    mode: str = checked("ensemble", choices=MODES)
    distill_weight: float = checked(0.5, ge=0.0)      # the official R50 setting
    distill_rois: int = checked(300, ge=1)            # M precomputed proposals per image
    ensemble_lambda: float = checked(2 / 3, ge=0.0, le=1.0)
