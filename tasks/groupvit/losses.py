"""GroupViT's training losses over the global batch (exact under DDP: every rank
computes the whole loss from gathered features; see `gather_for_global_loss`).

- symmetric InfoNCE between image and caption embeddings (learnable scale, clamp 100);
- the multi-label loss: each image against the noun prompts of its caption ("a photo
  of a {noun}."), soft targets spread over its own prompts, and each prompt against the
  images. Official padding repeats the caption when a caption has fewer nouns than
  prompts; here missing prompts are masked instead, so a caption without nouns adds
  nothing (and a batch without any adds an exact zero, never NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipheads.core.engine.losses import contrastive_loss, gather_for_global_loss


def multi_label_loss(image: torch.Tensor, prompts: torch.Tensor, valid: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """`image` [B, E], `prompts` [B, P, E] (un-normalised), `valid` [B, P] bool."""
    image = gather_for_global_loss(F.normalize(image, dim=-1))
    prompts = gather_for_global_loss(F.normalize(prompts, dim=-1))
    valid = gather_for_global_loss(valid.float()).bool()
    b, p, _ = prompts.shape
    flat, flat_valid = prompts.reshape(b * p, -1), valid.reshape(b * p)
    if not bool(flat_valid.any()):
        return (image.sum() + prompts.sum()) * 0.0
    owner = torch.arange(b, device=image.device).repeat_interleave(p)
    logits = scale * image @ flat.T                                    # [B, B*P]
    per_image = logits.masked_fill(~flat_valid[None], float("-inf")).log_softmax(dim=-1)
    own = (owner[None] == torch.arange(b, device=image.device)[:, None]) & flat_valid[None]
    has = own.any(dim=-1)
    target = own.float() / own.sum(dim=-1, keepdim=True).clamp(min=1)
    image_side = -(target * per_image.masked_fill(~own, 0.0)).sum(dim=-1)[has].mean()
    text_side = F.cross_entropy(logits.T[flat_valid], owner[flat_valid])
    return 0.5 * (image_side + text_side)


def group_noun_loss(groups: torch.Tensor, prompts: torch.Tensor, valid: torch.Tensor, noun_ids: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """Each noun prompt against every image of the global batch, an image scoring by its
    best-matching *group* (max over groups of the cosine); the positives are all images
    whose caption names the same noun (multi-positive cross-entropy).

    Not in the paper: the grouping head's addition (`group_noun_weight`). It asks every
    named object to be one group, and no group of an image without that noun to look
    like it, so groups become nameable, not only their mean."""
    groups = gather_for_global_loss(F.normalize(groups, dim=-1))        # [B, G, E]
    prompts = gather_for_global_loss(F.normalize(prompts, dim=-1))      # [B, P, E]
    valid = gather_for_global_loss(valid.float()).bool()
    noun_ids = gather_for_global_loss(noun_ids)
    b, p, _ = prompts.shape
    flat, flat_valid, flat_ids = prompts.reshape(b * p, -1), valid.reshape(b * p), noun_ids.reshape(b * p)
    if not bool(flat_valid.any()):
        return (groups.sum() + prompts.sum()) * 0.0
    best = torch.einsum("bge,ne->nbg", groups, flat[flat_valid]).max(dim=-1).values    # [n, B]
    ids = flat_ids[flat_valid]
    names = (noun_ids[None, :, :] == ids[:, None, None]) & valid[None]                  # [n, B, P]
    positive = names.any(dim=-1)                                                        # [n, B]
    log_p = (scale * best).log_softmax(dim=-1)
    return -(torch.logsumexp(log_p.masked_fill(~positive, float("-inf")), dim=-1)).mean()


def group_mil_loss(groups: torch.Tensor, prompts: torch.Tensor, valid: torch.Tensor, noun_ids: torch.Tensor,
                   scale: float = 10.0, bias: float = -5.0) -> torch.Tensor:
    """Multiple-instance BCE of every image against every noun prompt of the global batch
    (each in its own template; a mean over every image-prompt pair, so the batch order does
    not matter and 2 ranks equal 1 process): an image names a noun
    iff its best-matching group does (`sigmoid(scale x cosine + bias)`, fixed so that a
    cosine of 0.5 is even odds). The max is the positive's usual MIL form; for an absent
    noun it means *no* group of the image may look like it, which is what keeps background
    and other objects' groups from taking a shape's name.

    Not in the paper: the grouping head's addition (`group_mil_weight`)."""
    groups = gather_for_global_loss(F.normalize(groups, dim=-1))        # [B, G, E]
    prompts = gather_for_global_loss(F.normalize(prompts, dim=-1))      # [B, P, E]
    valid = gather_for_global_loss(valid.float()).bool()
    noun_ids = gather_for_global_loss(noun_ids)
    flat_ids, flat_valid = noun_ids.reshape(-1), valid.reshape(-1)
    if not bool(flat_valid.any()):
        return (groups.sum() + prompts.sum()) * 0.0
    named, named_ids = prompts.reshape(-1, prompts.shape[-1])[flat_valid], flat_ids[flat_valid]   # [K, E], [K]
    present = ((noun_ids[:, :, None] == named_ids[None, None]) & valid[:, :, None]).any(dim=1)   # [B, K]
    best = (groups @ named.T).max(dim=1).values                                                  # [B, K]
    return F.binary_cross_entropy_with_logits(scale * best + bias, present.float())


def groupvit_losses(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                    prompts: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                    multi_scale: torch.Tensor | None = None, multi_weight: float = 1.0,
                    groups: torch.Tensor | None = None, group_weight: float = 0.0,
                    noun_ids: torch.Tensor | None = None, mil_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """{'loss': total, 'contrastive', 'multi_label'[, 'group_noun', 'group_mil']} for one batch."""
    out = {"contrastive": contrastive_loss(image, text, scale, normalize=True)}
    total = out["contrastive"]
    if prompts is not None and multi_scale is not None and multi_weight > 0:
        out["multi_label"] = multi_label_loss(image, prompts, valid, multi_scale)
        total = total + multi_weight * out["multi_label"]
    if prompts is not None and groups is not None and noun_ids is not None and group_weight > 0:
        out["group_noun"] = group_noun_loss(groups, prompts, valid, noun_ids,
                                            multi_scale if multi_scale is not None else scale)
        total = total + group_weight * out["group_noun"]
    if prompts is not None and groups is not None and noun_ids is not None and mil_weight > 0:
        out["group_mil"] = group_mil_loss(groups, prompts, valid, noun_ids)
        total = total + mil_weight * out["group_mil"]
    out["loss"] = total
    return out
