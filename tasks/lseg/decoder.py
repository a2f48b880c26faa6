"""The DPT decoder and LSeg's language head.

DPTDecoder: tapped token maps -> one `features`-wide map at half the finest stride.
LSegHead: 1x1 conv to the text dimension, L2-normalised pixel embeddings against
L2-normalised label embeddings, logits = cosine / temperature (fixed), optional spatial
regularisation of the logit maps.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import FusionBlock, Reassemble, SpatialRegularizer


class DPTDecoder(nn.Module):
    """Reassemble each tap to its stride, 3x3 conv to `features`, fuse coarse to fine."""

    def __init__(self, widths: Sequence[int], channels: Sequence[int], strides: Sequence[int],
                 patch: int, features: int, readout: str = "project", use_bn: bool = True):
        super().__init__()
        self.reassemble = nn.ModuleList(
            Reassemble(w, c, patch, s, readout) for w, c, s in zip(widths, channels, strides))
        self.layer_rn = nn.ModuleList(
            nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False) for c in channels)
        n = len(channels)
        self.fusion = nn.ModuleList(FusionBlock(features, use_bn, has_skip=i < n - 1) for i in range(n))

    def forward(self, tokens: Sequence[torch.Tensor], cls: Sequence[torch.Tensor] | None) -> torch.Tensor:
        cls = cls if cls is not None else [None] * len(tokens)
        maps = [rn(re(t, c)) for re, rn, t, c in zip(self.reassemble, self.layer_rn, tokens, cls)]
        n = len(maps)
        x = None
        for i in range(n - 1, -1, -1):
            size = tuple(maps[i - 1].shape[-2:]) if i > 0 else None
            x = self.fusion[i](maps[i], size=size) if x is None else self.fusion[i](x, maps[i], size=size)
        return x


class LSegHead(nn.Module):
    """Pixel embeddings in the text space and their scaled cosine with label embeddings."""

    def __init__(self, features: int, text_dim: int, temperature: float = 0.07,
                 arch_option: int = 0, block_depth: int = 0, activation: str = "lrelu"):
        super().__init__()
        self.proj = nn.Conv2d(features, text_dim, kernel_size=1)
        self.logit_scale = 1.0 / temperature
        self.spatial = SpatialRegularizer(arch_option, activation) if arch_option in (1, 2) else None
        self.block_depth = block_depth

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] unit-norm pixel embeddings."""
        return F.normalize(self.proj(x), dim=1)

    def logits(self, pixel_emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[B, K, h, w]: cosine(pixel, label) / temperature, then spatial regularisation."""
        text = F.normalize(text.to(pixel_emb.dtype), dim=-1)
        out = self.logit_scale * torch.einsum("bdhw,kd->bkhw", pixel_emb, text)
        if self.spatial is not None:
            for _ in range(self.block_depth - 1):
                out = self.spatial(out)
            out = self.spatial(out, activate=False)
        return out
