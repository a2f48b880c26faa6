"""The CLIP4Clip head module: a temporal head (or cross-encoder) and the logit scale.

It sees CLIP features only (frame embeddings [V, T, D], text EOT embeddings [Q, D]); the
frozen backbone that makes them stays outside, so the head's state dict, optimizer and
checkpoints hold only what training changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HEADS
from .heads import CrossEncoder, MeanP, SeqLSTM, SeqTransf, masked_mean

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class HeadSpec:
    """What builds a head: its kind and sizes (recorded with every exported head)."""

    sim_header: str = "meanP"
    dim: int = 512
    layers: int = 4
    heads: int = 8
    positions: int = 77

    def check(self) -> "HeadSpec":
        if self.sim_header not in HEADS:
            raise ValueError(f"sim_header {self.sim_header!r}: one of {', '.join(HEADS)}")
        return self


class Clip4Clip(nn.Module):
    """Similarity of texts and videos from CLIP features, as the paper's four heads."""

    def __init__(self, spec: HeadSpec, logit_scale: float = math.log(100.0)):
        super().__init__()
        self.spec = spec.check()
        kind = spec.sim_header
        self.temporal: nn.Module | None = None
        self.cross: CrossEncoder | None = None
        if kind == "meanP":
            self.temporal = MeanP()
        elif kind == "seqLSTM":
            self.temporal = SeqLSTM(spec.dim)
        elif kind == "seqTransf":
            self.temporal = SeqTransf(spec.dim, spec.layers, spec.heads, spec.positions)
        else:
            self.cross = CrossEncoder(spec.dim, spec.layers, spec.heads, spec.positions)
        scale = torch.tensor(float(logit_scale))
        if self.cross is None:
            self.logit_scale = nn.Parameter(scale)
        else:   # the cross-encoder's logits are unscaled: a parameter without gradient stalls DDP
            self.register_buffer("logit_scale", scale)

    @property
    def loose(self) -> bool:
        """Whether a video is one embedding (an index answers a query by dot products)."""
        return self.cross is None

    def init_from_clip_text(self, clip_model: nn.Module) -> None:
        """The paper's initialisation from CLIP's text tower (seqTransf, tightTransf)."""
        body = self.cross.transformer if self.cross is not None else getattr(self.temporal, "transformer", None)
        if body is not None:
            body.init_from_clip_text(clip_model.positional_embedding, clip_model.transformer.resblocks)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def video_embeddings(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[V, T, D] frame features + [V, T] mask -> [V, D] unit video embeddings (loose heads)."""
        if self.temporal is None:
            raise ValueError("tightTransf has no video embedding: score pairs with logits()")
        return masked_mean(self.temporal(frames, mask), mask)

    def forward(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training view (DDP calls this): loose heads give unit text and video embeddings
        and the scale (the loss gathers them across ranks), tightTransf the local logits."""
        if self.cross is not None:
            return {"logits": self.cross(text, frames, mask)}
        return {"text": F.normalize(text, dim=-1), "video": self.video_embeddings(frames, mask),
                "scale": self.scale()}

    def logits(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[Q, D] text features x ([V, T, D], [V, T]) videos -> [Q, V] training logits."""
        if self.cross is not None:
            return self.cross(text, frames, mask)
        video = self.video_embeddings(frames, mask)
        return self.scale() * F.normalize(text, dim=-1) @ video.t()
