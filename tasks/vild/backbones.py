"""Detector backbones: torchvision's ResNet-FPN for the paper's settings, and a narrow
ResNet-FPN (torchvision's `BasicBlock`s at small widths) for the tiny world, where a
full R50 would spend the CPU on capacity that 96-pixel shapes do not need."""
from __future__ import annotations

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.resnet import BasicBlock

from .config import DetectorModel


class NarrowResNet(nn.Module):
    """A ResNet trunk with `widths` channels per stage (strides 4, 8, 16, 32), one
    `BasicBlock` stack per stage; named like torchvision's so FPN extraction works."""

    def __init__(self, widths: list[int], blocks: list[int]):
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(stem), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        channels = stem
        for i, (width, n) in enumerate(zip(widths, blocks), start=1):
            stride = 1 if i == 1 else 2
            down = None
            if stride != 1 or channels != width:
                down = nn.Sequential(nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width))
            layers = [BasicBlock(channels, width, stride, down)] + [BasicBlock(width, width) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            channels = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_backbone(cfg: DetectorModel) -> BackboneWithFPN:
    """The FPN backbone named by `cfg.backbone` (4 feature maps + max-pool level)."""
    if cfg.backbone == "narrow":
        body = NarrowResNet(cfg.narrow_widths, cfg.narrow_blocks)
        return BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, cfg.narrow_widths,
                               cfg.fpn_channels)
    return resnet_fpn_backbone(backbone_name=cfg.backbone, weights=cfg.backbone_weights,
                               trainable_layers=cfg.trainable_layers,
                               norm_layer=nn.BatchNorm2d if cfg.backbone_weights is None else None)
