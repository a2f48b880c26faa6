"""`LSegNet`: image encoder + DPT decoder + language head, and how it is built and trained.

The trainable module handed to the core Trainer is this net. With the default frozen
CLIP encoder it holds only the decoder and the head (the backbone is referenced, not
owned); with `unlock` or the timm encoder it also owns the encoder weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoder import DPTDecoder, LSegHead
from .encoders import ClipEncoder, TimmViTEncoder


class LSegNet(nn.Module):
    """pixels [B,3,H,W] (normalised) + label embeddings [K,D] -> logits [B,K,H,W]."""

    def __init__(self, encoder: nn.Module, cfg: ModelConfig, text_dim: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = DPTDecoder(encoder.widths, cfg.channels, cfg.strides, encoder.patch_size,
                                  cfg.features, cfg.readout, cfg.use_bn)
        self.head = LSegHead(cfg.features, text_dim, cfg.temperature, cfg.arch_option,
                             cfg.block_depth, cfg.activation)

    def pixel_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] unit-norm embeddings at half the finest decoder stride."""
        tokens, cls = self.encoder(pixels)
        return self.head.embed(self.decoder(tokens, cls))

    def forward(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        logits = self.head.logits(self.pixel_embeddings(pixels), text)
        return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=True)

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        """Encoder weights at the base lr, decoder + head at `head_lr_mult` x (the paper: 10)."""
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        head = [p for m in (self.decoder, self.head) for p in m.parameters() if p.requires_grad]
        return [g for g in ({"params": enc, "lr_mult": 1.0},
                            {"params": head, "lr_mult": float(head_lr_mult)}) if g["params"]]


def build_encoder(cfg: ModelConfig, backbone) -> nn.Module:
    """The configured image encoder (the backbone is only used for `encoder: clip`)."""
    if cfg.encoder == "timm":
        t = cfg.timm
        return TimmViTEncoder(t.name, cfg.layers, t.weights, t.kwargs, t.mean, t.std, t.trainable)
    return ClipEncoder(backbone, cfg.layers, cfg.unlock)


def build_net(cfg: ModelConfig, backbone, text_dim: int | None = None) -> LSegNet:
    """An LSegNet whose text dimension is the backbone's joint embedding size by default."""
    cfg.validate()
    return LSegNet(build_encoder(cfg, backbone), cfg, text_dim or backbone.embed_dim)
