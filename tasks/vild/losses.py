"""ViLD's region losses (tensorflow/tpu `projects/vild`), written over torch tensors.

- classification: softmax cross-entropy over background + base classes, mean over the
  sampled RoIs;
- class-agnostic box regression: Huber (smooth L1, delta 1.0) on the 4 deltas of the
  foreground RoIs, summed and divided by the number of foreground coordinates (the
  official `SUM_BY_NONZERO_WEIGHTS`);
- ViLD-image distillation: L1 between the normalised region embeddings and the cached
  CLIP embeddings, summed over the embedding dimensions and averaged over the valid
  proposals, times the distillation weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_agnostic_box_loss(deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                            beta: float = 1.0) -> torch.Tensor:
    """`deltas` [N, 4], `labels` [N] (0 = background), `targets` [N, 4] encoded boxes."""
    fg = labels > 0
    if not bool(fg.any()):
        return deltas.sum() * 0.0
    loss = F.smooth_l1_loss(deltas[fg], targets[fg], beta=beta, reduction="sum")
    return loss / (4 * int(fg.sum()))


def distill_loss(regions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`regions` [M, E] (normalised), `targets` [M, E] CLIP embeddings (normalised here)."""
    if regions.shape[0] == 0:
        return regions.sum() * 0.0
    return (regions - F.normalize(targets.to(regions.dtype), dim=-1)).abs().sum(dim=-1).mean()
