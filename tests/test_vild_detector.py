"""The ViLD detector's parts against independent references: torchvision's own
post-processing (per-class boxes) for our class-agnostic NMS, the official ensemble
formula, the official losses written out, and gradients through every branch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads

from clipheads.core.errors import UserError
from clipheads.tasks.vild.classifier import TextClassifier, ensemble_scores
from clipheads.tasks.vild.config import DetectorModel, ViLDHeadConfig
from clipheads.tasks.vild.detector import ViLDDetector
from clipheads.tasks.vild.losses import class_agnostic_box_loss, distill_loss
from clipheads.tasks.vild.roi_heads import DistillTargets

E = 16


def small_cfg(**kw) -> DetectorModel:
    base = dict(backbone="resnet18", min_size=96, max_size=96, anchor_sizes=[8, 16, 32, 64, 128],
                conv_channels=16, fc_dim=32, rois_per_image=32, rpn_pre_nms_train=200,
                rpn_post_nms_train=60, rpn_pre_nms_test=200, rpn_post_nms_test=40, mask_convs=1, box_convs=1)
    base.update(kw)
    return DetectorModel(**base)


def detector(mode: str, seed: int = 0, **kw) -> ViLDDetector:
    torch.manual_seed(seed)
    model = ViLDDetector(small_cfg(**kw), ViLDHeadConfig(mode=mode), E)
    model.set_vocabulary(torch.randn(3, E), torch.tensor([False, False, True]))
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 96, generator=g), torch.rand(3, 80, 96, generator=g)]
    targets = []
    for (x0, y0, x1, y1), label, (h, w) in [((20, 10, 60, 50), 1, (96, 96)), ((5, 5, 40, 45), 2, (80, 96))]:
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        mask[0, y0:y1, x0:x1] = 1
        targets.append({"boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
                        "labels": torch.tensor([label]), "masks": mask})
    distill = [DistillTargets(torch.tensor([[0., 0, 40, 40], [30, 30, 90, 90]]), torch.randn(2, E, generator=g)),
               DistillTargets(torch.tensor([[10., 10, 70, 60], [0, 0, 0, 0]]), torch.randn(2, E, generator=g))]
    return images, targets, distill


def test_ensemble_equals_the_official_cube_root_formula():
    g = torch.Generator().manual_seed(0)
    text = torch.rand(50, 7, generator=g).softmax(-1)
    image = torch.rand(50, 7, generator=g).softmax(-1)
    novel = torch.tensor([0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    base_mask = (~novel).float()[None]        # the official rare mask: 1 for base classes
    third = (1 - base_mask) * image + base_mask * text
    official = (image * text * third).pow(1 / 3)
    torch.testing.assert_close(ensemble_scores(text, image, novel), official, rtol=1e-5, atol=1e-7)


def test_classifier_zeroes_masked_logits_only_in_training_and_normalises_background():
    clf = TextClassifier(E, temperature=100.0)
    clf.set_vocabulary(torch.randn(4, E) * 5, torch.tensor([False, True, False, True]))
    regions = F.normalize(torch.randn(6, E), dim=-1)
    clf.train()
    logits = clf(regions)
    assert torch.all(logits[:, 2] == 0) and torch.all(logits[:, 4] == 0)
    assert torch.all(logits[:, [1, 3]] != 0)
    clf.eval()
    full = clf(regions)
    expected = 100 * regions @ F.normalize(clf.text, dim=-1).T
    torch.testing.assert_close(full[:, 1:], expected)
    torch.testing.assert_close(full[:, 0], 100 * regions @ F.normalize(clf.background, dim=0))
    assert full.abs().max() <= 100 + 1e-4
    with pytest.raises(UserError, match="empty"):
        clf.set_vocabulary(torch.zeros(0, E))
    with pytest.raises(UserError, match="embedding size"):
        clf.set_vocabulary(torch.randn(3, E + 1))


def test_box_loss_is_the_official_huber_over_foreground_coordinates():
    g = torch.Generator().manual_seed(0)
    deltas, targets = torch.randn(20, 4, generator=g) * 2, torch.randn(20, 4, generator=g)
    labels = torch.tensor([0, 3, 0, 1] * 5)
    diff = (deltas - targets)[labels > 0].abs()
    huber = torch.where(diff <= 1.0, 0.5 * diff ** 2, diff - 0.5)
    torch.testing.assert_close(class_agnostic_box_loss(deltas, labels, targets), huber.sum() / (4 * 10))
    assert class_agnostic_box_loss(deltas, torch.zeros(20, dtype=torch.long), targets) == 0


def test_distill_loss_sums_dims_and_averages_proposals():
    g = torch.Generator().manual_seed(0)
    regions = F.normalize(torch.randn(5, E, generator=g), dim=-1)
    targets = torch.randn(5, E, generator=g) * 3
    expected = sum((regions[i] - targets[i] / targets[i].norm()).abs().sum() for i in range(5)) / 5
    torch.testing.assert_close(distill_loss(regions, targets), expected)


def test_class_agnostic_postprocess_equals_torchvision_with_replicated_boxes():
    """torchvision's RoIHeads.postprocess_detections on per-class deltas that are all
    the same box is the reference for our per-class NMS over one box per RoI."""
    model = detector("text").eval()
    heads = model.roi_heads
    g = torch.Generator().manual_seed(3)
    proposals = [torch.rand(40, 2, generator=g) * 50, torch.rand(30, 2, generator=g) * 50]
    proposals = [torch.cat([p, p + 5 + torch.rand(len(p), 2, generator=g) * 40], dim=1) for p in proposals]
    deltas = torch.randn(70, 4, generator=g) * 0.3
    probs = torch.rand(70, 3, generator=g).softmax(-1)
    boxes = heads.box_coder.decode(deltas, proposals)[:, 0]
    ours = [heads._per_class_nms(b.clamp(0, 96), s) for b, s in zip(boxes.split([40, 30]), probs.split([40, 30]))]
    ref = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, heads.score_thresh, heads.nms_thresh,
                   heads.detections_per_img)
    logits = torch.cat([torch.zeros(70, 1), probs.log()], dim=1)   # softmax of these = [1, p...] / 2
    ref_boxes, ref_scores, ref_labels = ref.postprocess_detections(logits, deltas.repeat(1, 4), proposals,
                                                                  [(96, 96), (96, 96)])
    for o, b, s, lab in zip(ours, ref_boxes, ref_scores, ref_labels):
        assert torch.equal(o["labels"], lab)
        torch.testing.assert_close(o["boxes"], b)
        torch.testing.assert_close(o["scores"], s * 2)


@pytest.mark.parametrize("mode", ["text", "image", "vild", "ensemble"])
def test_every_mode_trains_with_gradients_where_the_paper_sends_them(mode):
    torch.set_num_threads(1)
    model = detector(mode).train()
    images, targets, distill = batch()
    losses = model(images, targets, distill)
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_box_reg", "loss_classifier", "loss_mask"}
    if mode != "text":
        expected.add("loss_distill")
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    heads = model.roi_heads
    grad = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert grad(model.backbone) and grad(heads.box_head.project)
    assert (heads.classifier.background.grad is not None and heads.classifier.background.grad.abs().sum() > 0) \
        == (mode != "image")
    if mode == "ensemble":
        assert grad(heads.image_branch)
    assert heads.classifier.text.grad is None


def test_distill_padding_rows_are_ignored():
    model = detector("vild").train()
    images, targets, distill = batch()
    torch.manual_seed(5)
    with_pad = model(images, targets, distill)["loss_distill"]
    trimmed = [distill[0], DistillTargets(distill[1].boxes[:1], distill[1].embeddings[:1])]
    torch.manual_seed(5)
    without = model(images, targets, trimmed)["loss_distill"]
    torch.testing.assert_close(with_pad, without)


def test_inference_outputs_boxes_masks_and_survives_no_proposals():
    model = detector("ensemble").eval()
    images, _, _ = batch()
    with torch.no_grad():
        out = model(images)
    for o, img in zip(out, images):
        assert o["boxes"].shape[1] == 4 and o["masks"].shape[1:] == (1, *img.shape[-2:])
        assert o["labels"].min() >= 1 and o["labels"].max() <= 3 and len(o["boxes"]) <= 300
        assert torch.all((o["scores"] >= 0) & (o["scores"] <= 1))
    empty = model.roi_heads._detect({k: v for k, v in model.backbone(torch.zeros(1, 3, 96, 96)).items()},
                                    [torch.zeros(0, 4)], [(96, 96)])
    assert empty[0]["boxes"].shape == (0, 4) and empty[0]["masks"].shape[0] == 0


def test_distill_boxes_follow_the_transform_resize():
    """A distillation box must land on the same pixels after the detector's resize: the
    RoI features of a box given in input pixels equal those of the resized box."""
    model = detector("image", min_size=48, max_size=48).train()
    seen = {}
    original = model.roi_heads.box_roi_pool.forward

    def spy(features, rois, shapes):
        seen.setdefault("rois", rois)
        return original(features, rois, shapes)
    model.roi_heads.box_roi_pool.forward = spy
    images, targets, distill = batch()
    model(images[:1], targets[:1], distill[:1])
    assert torch.allclose(seen["rois"][0][-2:], distill[0].boxes / 2)


def test_discard_background_softmaxes_the_text_branch_over_classes_only():
    """The official postprocess option: without it the text probabilities are the
    background-inclusive softmax minus background; with it, a softmax over the classes."""
    model = detector("text").eval()
    pooled = torch.randn(5, model.backbone.out_channels, 7, 7)
    with torch.no_grad():
        logits = model.roi_heads.classifier(model.roi_heads.box_head(pooled)[1])
        _, kept = model.roi_heads.class_scores(pooled)
        model.roi_heads.discard_background = True
        _, discarded = model.roi_heads.class_scores(pooled)
    torch.testing.assert_close(kept, logits.softmax(-1)[:, 1:])
    torch.testing.assert_close(discarded, logits[:, 1:].softmax(-1))
    assert torch.all(kept.sum(-1) < 1) and torch.allclose(discarded.sum(-1), torch.ones(5))
