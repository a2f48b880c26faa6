"""The DPT building blocks LSeg's decoder is made of.

Reassemble: ViT tokens of one block -> a feature map at one output stride (readout of
the class token, 1x1 projection, transposed conv up / strided conv down). Fusion:
residual conv units that merge a coarser path with a finer skip and upsample. Spatial
regularisation: LSeg's optional blocks that smooth the per-label logit maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipheads.core.errors import UserError


class Readout(nn.Module):
    """How the class token enters the patch tokens: 'ignore' it, 'add' it, or 'project'
    (concatenate, Linear 2C -> C, GELU; the paper's choice)."""

    def __init__(self, width: int, mode: str = "project"):
        super().__init__()
        self.mode = mode
        self.proj = nn.Linear(2 * width, width) if mode == "project" else None

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """tokens [B, C, h, w], cls [B, C] -> [B, C, h, w]."""
        if self.mode == "ignore":
            return tokens
        if cls is None:
            raise UserError(f"readout '{self.mode}' needs class tokens; this encoder has none "
                            "(use model.readout=ignore)")
        if self.mode == "add":
            return tokens + cls[:, :, None, None]
        c = tokens.shape[1]
        w, b = self.proj.weight, self.proj.bias
        # Linear over concat(token, cls), split so the cls half is computed once per image.
        x = F.linear(tokens.permute(0, 2, 3, 1), w[:, :c])
        x = x + F.linear(cls, w[:, c:], b)[:, None, None, :]
        return F.gelu(x).permute(0, 3, 1, 2)


def resampler(channels: int, patch: int, stride: int) -> nn.Module:
    """Grid (stride `patch`) -> output stride `stride`: transposed conv up (kernel = stride =
    r), strided conv down (kernel r+1, padding r/2: the paper's 3x3 stride 2 for r=2;
    ceil(grid/r) outputs), identity when equal."""
    if stride < patch:
        if patch % stride:
            raise UserError(f"model.strides: {stride} does not divide the patch size {patch}")
        r = patch // stride
        return nn.ConvTranspose2d(channels, channels, kernel_size=r, stride=r)
    if stride > patch:
        if stride % patch:
            raise UserError(f"model.strides: {stride} is not a multiple of the patch size {patch}")
        r = stride // patch
        return nn.Conv2d(channels, channels, kernel_size=r + 1, stride=r, padding=r // 2)
    return nn.Identity()


class Reassemble(nn.Module):
    """One tapped block's tokens -> a `channels`-wide map at output stride `stride`."""

    def __init__(self, width: int, channels: int, patch: int, stride: int, readout: str):
        super().__init__()
        self.readout = Readout(width, readout)
        self.project = nn.Conv2d(width, channels, kernel_size=1)
        self.resample = resampler(channels, patch, stride)

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        return self.resample(self.project(self.readout(tokens, cls)))


class ResidualConvUnit(nn.Module):
    """act -> conv3x3 (-> BN) -> act -> conv3x3 (-> BN), plus the input."""

    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(features) if use_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class FusionBlock(nn.Module):
    """Merge the coarser path with this level's skip, refine, upsample, 1x1 conv.

    Upsampling goes to the next finer level's size (bilinear, align_corners) rather than a
    fixed x2, so grids of odd size still line up; for even grids it is the same x2."""

    def __init__(self, features: int, use_bn: bool, has_skip: bool):
        super().__init__()
        self.skip_unit = ResidualConvUnit(features, use_bn) if has_skip else None
        self.unit = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


_ACTIVATIONS = {"relu": nn.ReLU, "lrelu": nn.LeakyReLU, "tanh": nn.Tanh}


class SpatialRegularizer(nn.Module):
    """LSeg's spatial regularisation of the logit maps: one 3x3 kernel shared by every
    label channel ('depthwise'), plus the max over labels added back ('bottleneck')."""

    def __init__(self, option: int, activation: str = "lrelu"):
        super().__init__()
        if option not in (1, 2):
            raise UserError(f"spatial regularisation option must be 1 or 2, got {option}")
        self.bottleneck = option == 1
        self.conv = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, logits: torch.Tensor, activate: bool = True) -> torch.Tensor:
        b, k, h, w = logits.shape
        out = self.conv(logits.reshape(b * k, 1, h, w)).reshape(b, k, h, w)
        if self.bottleneck:
            out = out + logits.max(dim=1, keepdim=True).values
        return self.act(out) if activate else out
