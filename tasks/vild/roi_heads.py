"""torchvision's `RoIHeads` with ViLD's changes, by subclassing (not forking): RoI
sampling, RoIAlign, box coding, mask targets and mask paste stay torchvision's.

What changes where torchvision assumes one box and one mask per class:
- box regression is class-agnostic (4 deltas per RoI), and so is the mask (1 channel);
- classification is a region embedding scored against text embeddings (`TextClassifier`);
- training may add precomputed proposals (ViLD-image) whose embeddings are distilled;
- post-processing replicates each class-agnostic box over the classes for per-class
  NMS (0.5), keeps up to 300 detections with score > 0.0 (the paper's LVIS setting).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from .classifier import TextClassifier, ensemble_scores
from .losses import class_agnostic_box_loss, distill_loss


@dataclass
class DistillTargets:
    """ViLD-image targets of one image: proposal boxes [M, 4] (in the detector's input
    coordinates) and their cached CLIP embeddings [M, E]."""

    boxes: torch.Tensor
    embeddings: torch.Tensor


class RegionBranch(nn.Module):
    """Box-head features -> L2-normalised region embedding in the text space."""

    def __init__(self, head: nn.Module, fc_dim: int, embed_dim: int):
        super().__init__()
        self.head = head
        self.project = nn.Linear(fc_dim, embed_dim)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, fc_dim], normalised embeddings [N, E])."""
        features = self.head(pooled)
        return features, F.normalize(self.project(features), dim=-1)


class ViLDRoIHeads(RoIHeads):
    """RoI heads of ViLD. `mode`: text | image | vild | ensemble (see the task config).

    `image_branch` is ViLD-ensemble's separate head for the distilled (image) embedding;
    in the other modes the text branch's embedding is both classified and distilled."""

    def __init__(self, *, box_roi_pool: nn.Module, text_branch: RegionBranch, box_regressor: nn.Linear,
                 classifier: TextClassifier, mode: str, image_branch: RegionBranch | None = None,
                 distill_weight: float = 0.5, ensemble_lambda: float = 2 / 3, box_loss_beta: float = 1.0,
                 mask_roi_pool: nn.Module | None = None, mask_head: nn.Module | None = None,
                 mask_predictor: nn.Module | None = None, fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 score_thresh: float = 0.0, nms_thresh: float = 0.5, detections_per_img: int = 300):
        super().__init__(box_roi_pool, text_branch, box_regressor, fg_iou_thresh, bg_iou_thresh,
                         batch_size_per_image, positive_fraction, None, score_thresh, nms_thresh,
                         detections_per_img, mask_roi_pool, mask_head, mask_predictor)
        if (mode == "ensemble") != (image_branch is not None):
            raise ValueError("an image branch is what ViLD-ensemble adds: give one exactly for mode='ensemble'")
        self.mode = mode
        self.classifier = classifier
        self.image_branch = image_branch
        self.distill_weight = distill_weight
        self.ensemble_lambda = ensemble_lambda
        self.box_loss_beta = box_loss_beta
        self.register_buffer("novel", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.branch = "ensemble"    # inference of an ensemble: "ensemble" | "text" | "image" (paper ablations)
        # The official postprocess option: drop the text branch's background logit before
        # its softmax, so classes never learned as boxes are not drowned by "background".
        self.discard_background = False

    def set_vocabulary(self, text: torch.Tensor, novel: torch.Tensor | None = None,
                       zero_in_training: bool = True) -> None:
        """Class embeddings [C, E]; `novel` [C] bool marks classes scored by the image
        branch first at inference (ensemble) and zeroed in training (official rare mask)."""
        novel = torch.zeros(text.shape[0], dtype=torch.bool) if novel is None else novel.bool().cpu()
        self.classifier.set_vocabulary(text, novel if zero_in_training else None)
        self.novel = novel.to(self.classifier.text.device)

    # forward --------------------------------------------------------------------------------
    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None,
                distill: list[DistillTargets] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            return [], self._training_losses(features, proposals, image_shapes, targets, distill)
        return self._detect(features, proposals, image_shapes), {}

    def _training_losses(self, features, proposals, image_shapes, targets, distill) -> dict[str, torch.Tensor]:
        proposals, matched, labels, regression = self.select_training_samples(proposals, targets)
        labels_flat, regression_flat = torch.cat(labels), torch.cat(regression)
        if self._distils and distill:   # padding rows (all-zero boxes) never reach the head or its BatchNorm
            distill = [DistillTargets(d.boxes[keep], d.embeddings[keep])
                       for d in distill for keep in [d.boxes.amax(dim=-1) > 0]]
        extra = [d.boxes.to(proposals[0]) for d in distill] if self._distils and distill else None
        if extra is not None and self.image_branch is None:
            # one pass through the shared head (its BatchNorm sees both, as the official 'vanilla' mode)
            rois = [torch.cat([p, e]) for p, e in zip(proposals, extra)]
            feats, regions = self.box_head(self.box_roi_pool(features, rois, image_shapes))
            sampled = torch.cat([torch.cat([torch.ones(len(p), dtype=torch.bool), torch.zeros(len(e), dtype=torch.bool)])
                                 for p, e in zip(proposals, extra)]).to(regions.device)
            distilled, feats, regions = regions[~sampled], feats[sampled], regions[sampled]
        else:
            feats, regions = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
            distilled = None
            if extra is not None:
                _, distilled = self.image_branch(self.box_roi_pool(features, extra, image_shapes))
        losses = {"loss_box_reg": class_agnostic_box_loss(self.box_predictor(feats), labels_flat, regression_flat,
                                                          self.box_loss_beta)}
        logits = self.classifier(regions)
        class_loss = F.cross_entropy(logits, labels_flat)
        losses["loss_classifier"] = class_loss if self.mode != "image" else class_loss * 0.0
        if distilled is not None:
            target = torch.cat([d.embeddings for d in distill]).to(distilled)
            losses["loss_distill"] = self.distill_weight * distill_loss(distilled, target)
        if self.has_mask():
            losses["loss_mask"] = self._mask_loss(features, proposals, image_shapes, targets, matched, labels)
        return losses

    @property
    def _distils(self) -> bool:
        return self.mode != "text"

    def _mask_loss(self, features, proposals, image_shapes, targets, matched, labels) -> torch.Tensor:
        positive = [torch.where(lab > 0)[0] for lab in labels]
        rois = [p[i] for p, i in zip(proposals, positive)]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois, image_shapes)))
        agnostic = [torch.zeros_like(t["labels"]) for t in targets]   # every mask is channel 0
        return maskrcnn_loss(logits, rois, [t["masks"] for t in targets], agnostic,
                             [m[i] for m, i in zip(matched, positive)])

    # inference ------------------------------------------------------------------------------
    def class_scores(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, [N, C] class probabilities) of pooled RoI features at inference."""
        feats, regions = self.box_head(pooled)
        logits = self.classifier(regions)
        text_probs = logits[:, 1:].softmax(dim=-1) if self.discard_background else logits.softmax(dim=-1)[:, 1:]
        if self.image_branch is None or self.branch == "text":
            return feats, text_probs
        _, image_regions = self.image_branch(pooled)
        image_probs = self.classifier.class_logits(image_regions).softmax(dim=-1)
        if self.branch == "image":
            return feats, image_probs
        return feats, ensemble_scores(text_probs, image_probs, self.novel, self.ensemble_lambda)

    def _detect(self, features, proposals, image_shapes) -> list[dict[str, torch.Tensor]]:
        feats, scores = self.class_scores(self.box_roi_pool(features, proposals, image_shapes))
        boxes = self.box_coder.decode(self.box_predictor(feats), proposals).reshape(-1, 4)
        result = []
        for b, s, shape in zip(boxes.split([len(p) for p in proposals]), scores.split([len(p) for p in proposals]),
                               image_shapes):
            result.append(self._per_class_nms(box_ops.clip_boxes_to_image(b, shape), s))
        if self.has_mask():
            rois = [r["boxes"] for r in result]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, rois, image_shapes)))
            probs = maskrcnn_inference(logits, [torch.zeros_like(r["labels"]) for r in result])
            for r, p in zip(result, probs):
                r["masks"] = p
        return result

    def _per_class_nms(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """One class-agnostic box per RoI, scored for every class: per-class NMS, top-k.
        Labels are 1-based (0 is background), as in torchvision."""
        n, c = scores.shape
        labels = torch.arange(1, c + 1, device=scores.device).repeat(n)
        boxes, scores = boxes.repeat_interleave(c, dim=0), scores.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
