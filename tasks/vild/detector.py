"""The ViLD detector: torchvision's Mask R-CNN parts (transform, ResNet-FPN backbone,
RPN, RoIAlign, mask head) around `ViLDRoIHeads`.

Composed rather than inherited from `MaskRCNN` because ViLD-image training passes
precomputed proposals next to the targets, and those boxes must follow the
transform's resize exactly as the targets do.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from .backbones import build_backbone
from .classifier import TextClassifier
from .config import DetectorModel, ViLDHeadConfig
from .roi_heads import DistillTargets, RegionBranch, ViLDRoIHeads

FPN_LEVELS = ["0", "1", "2", "3"]


def _box_head(cfg: DetectorModel, channels: int) -> nn.Module:
    """ViLD's box head: `box_convs` 3x3 convs with BatchNorm, then `box_fcs` fcs."""
    return FastRCNNConvFCHead((channels, 7, 7), [cfg.conv_channels] * cfg.box_convs, [cfg.fc_dim] * cfg.box_fcs,
                              norm_layer=nn.BatchNorm2d)


class ViLDDetector(nn.Module):
    """images (list of [3, H, W] in 0..1) -> detections in input pixels (eval), or a
    dict of losses (train). Labels are 1-based indices into the current vocabulary."""

    def __init__(self, cfg: DetectorModel, vild: ViLDHeadConfig, embed_dim: int):
        super().__init__()
        cfg.validate()
        self.cfg, self.vild, self.embed_dim = cfg, vild, embed_dim
        self.backbone = build_backbone(cfg)
        channels = self.backbone.out_channels
        levels = len(FPN_LEVELS) + 1   # plus the FPN's max-pool level
        if len(cfg.anchor_sizes) != levels:
            raise ValueError(f"model.anchor_sizes needs {levels} sizes (one per FPN level), got {cfg.anchor_sizes}")
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * levels)
        self.transform = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, cfg.mean, cfg.std)
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=1),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_train, "testing": cfg.rpn_pre_nms_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_train, "testing": cfg.rpn_post_nms_test},
            nms_thresh=0.7)
        text_branch = RegionBranch(_box_head(cfg, channels), cfg.fc_dim, embed_dim)
        image_branch = RegionBranch(_box_head(cfg, channels), cfg.fc_dim, embed_dim) if vild.mode == "ensemble" else None
        mask = {}
        if cfg.mask:
            mask = dict(mask_roi_pool=MultiScaleRoIAlign(FPN_LEVELS, 14, 2),
                        mask_head=MaskRCNNHeads(channels, [cfg.conv_channels] * cfg.mask_convs, 1,
                                                norm_layer=nn.BatchNorm2d),
                        mask_predictor=MaskRCNNPredictor(cfg.conv_channels, cfg.conv_channels, 1))
        self.roi_heads = ViLDRoIHeads(
            box_roi_pool=MultiScaleRoIAlign(FPN_LEVELS, 7, 2), text_branch=text_branch,
            box_regressor=nn.Linear(cfg.fc_dim, 4), classifier=TextClassifier(embed_dim, cfg.temperature),
            mode=vild.mode, image_branch=image_branch, distill_weight=vild.distill_weight,
            ensemble_lambda=vild.ensemble_lambda, box_loss_beta=cfg.box_loss_beta,
            batch_size_per_image=cfg.rois_per_image, positive_fraction=cfg.positive_fraction,
            score_thresh=cfg.score_threshold, nms_thresh=cfg.nms_threshold,
            detections_per_img=cfg.detections_per_image, **mask)
        nn.init.normal_(self.roi_heads.box_predictor.weight, std=0.001)
        nn.init.zeros_(self.roi_heads.box_predictor.bias)

    def set_vocabulary(self, text: torch.Tensor, novel: torch.Tensor | None = None,
                       zero_in_training: bool = True) -> None:
        self.roi_heads.set_vocabulary(text, novel, zero_in_training)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None,
                distill: list[DistillTargets] | None = None):
        original = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        if distill is not None:
            distill = [DistillTargets(resize_boxes(d.boxes, o, s), d.embeddings)
                       for d, o, s in zip(distill, original, batch.image_sizes)]
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets, distill)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, batch.image_sizes, original)

    @torch.no_grad()
    def proposals(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """The RPN's proposals (eval mode) in input pixels: what `vild precompute` embeds."""
        original = [tuple(img.shape[-2:]) for img in images]
        batch, _ = self.transform(images)
        proposals, _ = self.rpn(batch, self.backbone(batch.tensors))
        return [resize_boxes(p, s, o) for p, s, o in zip(proposals, batch.image_sizes, original)]
