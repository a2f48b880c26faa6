"""ViLD's open-vocabulary classifier: region embeddings scored by cosine against fixed
text embeddings plus one learned background embedding, times a temperature, and the
ViLD-ensemble fusion of the text and image branches.

The vocabulary is a buffer set from outside (`set_vocabulary`), never a trained
weight, so the same detector scores base classes in training and any words at
inference. It is not saved with the detector (the text bank re-creates it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipheads.core.errors import UserError


class TextClassifier(nn.Module):
    """[N, E] normalised regions -> [N, 1 + C] logits (index 0 = background).

    `zeroed` (bool [C]) marks classes whose logits are multiplied by 0 in training, as
    the official code does with its rare mask: they stay in the softmax at logit 0,
    they are never pushed up or down."""

    def __init__(self, embed_dim: int, temperature: float = 100.0):
        super().__init__()
        self.temperature = temperature
        self.background = nn.Parameter(torch.randn(embed_dim) * 0.01)
        self.register_buffer("text", torch.zeros(0, embed_dim), persistent=False)
        self.register_buffer("zeroed", torch.zeros(0, dtype=torch.bool), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.text.shape[0]

    def set_vocabulary(self, text: torch.Tensor, zeroed: torch.Tensor | None = None) -> None:
        """`text` [C, E] class embeddings (normalised here); `zeroed` [C] bool or None."""
        if text.ndim != 2 or text.shape[1] != self.background.shape[0]:
            raise UserError(f"text embeddings of shape {tuple(text.shape)} do not fit this detector's "
                            f"embedding size {self.background.shape[0]}; encode the labels with the same backbone")
        if text.shape[0] == 0:
            raise UserError("the vocabulary is empty: pass at least one label")
        if zeroed is not None and tuple(zeroed.shape) != (text.shape[0],):
            raise UserError(f"the training mask has {zeroed.shape[0]} entries for {text.shape[0]} classes")
        device = self.background.device
        self.text = F.normalize(text.detach().float(), dim=-1).to(device)
        self.zeroed = (zeroed.bool() if zeroed is not None else torch.zeros(text.shape[0], dtype=torch.bool)).to(device)

    def class_logits(self, regions: torch.Tensor) -> torch.Tensor:
        """[N, C] temperature x cosine against the vocabulary only (no background)."""
        if self.num_classes == 0:
            raise UserError("the detector has no vocabulary yet: call set_vocabulary(text embeddings)")
        return self.temperature * regions @ self.text.T.to(regions.dtype)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        logits = self.class_logits(regions)
        if self.training and bool(self.zeroed.any()):
            logits = logits * (~self.zeroed).to(logits.dtype)
        background = self.temperature * regions @ F.normalize(self.background, dim=0).to(regions.dtype)
        return torch.cat([background[:, None], logits], dim=1)


def ensemble_scores(text_probs: torch.Tensor, image_probs: torch.Tensor, novel: torch.Tensor,
                    lam: float = 2 / 3) -> torch.Tensor:
    """ViLD-ensemble: base classes p_text^lam * p_image^(1-lam), novel classes
    p_image^lam * p_text^(1-lam) (geometric means; the paper's lam = 2/3).

    `text_probs` [N, C] (softmax over background + classes, background dropped),
    `image_probs` [N, C] (softmax over the classes), `novel` [C] bool."""
    lam_t = torch.where(novel, 1.0 - lam, lam).to(text_probs.dtype)
    return text_probs.clamp(min=0).pow(lam_t) * image_probs.clamp(min=0).pow(1.0 - lam_t)
