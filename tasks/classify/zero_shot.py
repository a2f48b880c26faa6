"""Zero-shot classification: image embeddings against template-averaged label embeddings."""
from __future__ import annotations

import torch


def zero_shot_logits(image_features: torch.Tensor, label_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's logits: scale * cos(image, label); softmax over labels gives probabilities."""
    image = torch.nn.functional.normalize(image_features.float(), dim=-1)
    return logit_scale.exp().float() * image @ label_embeddings.float().T


def top_k(probs: torch.Tensor, labels: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable labels as [{"label", "prob"}], sorted by prob."""
    k = min(k, len(labels))
    values, index = probs.topk(k, dim=-1)
    return [[{"label": labels[j], "prob": round(float(v), 6)} for v, j in zip(vs, ix)]
            for vs, ix in zip(values.tolist(), index.tolist())]
