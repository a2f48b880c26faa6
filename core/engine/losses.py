"""Contrastive (CLIP-style) loss that is exact under DDP.

Each rank gathers the features of the whole global batch (`all_gather_with_grad`) and
computes the full symmetric InfoNCE, so every rank holds the true global loss. Only the
local slice carries gradient, and DDP then *averages* gradients over ranks; the local
slice's gradient is therefore scaled by the world size so that the averaged gradient
equals the single-process gradient on the full batch.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from .distributed import all_gather_with_grad, get_world_size


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by `scale` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def gather_for_global_loss(local: torch.Tensor) -> torch.Tensor:
    """The global batch of `local` (concatenated over ranks, rank order) for a loss that
    every rank computes whole: only the local slice carries gradient, scaled by the world
    size, so DDP's gradient averaging gives the one-process gradient. Identity alone."""
    world = get_world_size()
    if world == 1:
        return local
    return all_gather_with_grad(_ScaleGrad.apply(local, float(world)))


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: Union[torch.Tensor, float], normalize: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: mean of image->text and text->image CE.

    `image_features`, `text_features`: (B, D) local features, pair i matches pair i
    (same B on every rank). `logit_scale` multiplies the cosine similarities (the
    exponentiated value, as in open_clip). Pass `normalize=True` if features are not
    yet L2-normalised. Assumes DDP-style gradient averaging when distributed.
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"contrastive_loss needs two (B, D) tensors of the same shape, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    if normalize:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
    image_features = gather_for_global_loss(image_features)
    text_features = gather_for_global_loss(text_features)
    logits = logit_scale * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
