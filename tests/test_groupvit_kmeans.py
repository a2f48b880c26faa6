"""The grouping head's k-means first stage (`assign: kmeans`) and the multiple-instance
group loss (`group_mil_weight`)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipheads.core.errors import UserError
from clipheads.tasks.groupvit.config import HeadModel
from clipheads.tasks.groupvit.kmeans import kmeans_logits
from clipheads.tasks.groupvit.losses import group_mil_loss


def _two_blobs(grid: int = 8, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of a plain background with two differently 'coloured' square blobs, and the
    blob index of each token (0 background, 1 and 2 the blobs)."""
    torch.manual_seed(0)
    colours = torch.randn(3, dim) * 3
    which = torch.zeros(grid, grid, dtype=torch.long)
    which[2:5, 1:4] = 1
    which[3:6, 5:8] = 2
    tokens = colours[which.flatten()] + 0.05 * torch.randn(grid * grid, dim)
    return tokens[None], which.flatten()


def test_kmeans_groups_never_mix_two_differently_coloured_objects():
    tokens, which = _two_blobs()
    logits = kmeans_logits(tokens, (8, 8), groups=9)
    assert logits.shape == (1, 9, 64) and not logits.requires_grad
    group = logits[0].argmax(dim=0)
    for g in group.unique():
        assert len(which[group == g].unique()) == 1, "a group holds tokens of two regions"
    assert torch.equal(logits, kmeans_logits(tokens, (8, 8), groups=9))      # deterministic


def test_kmeans_position_weight_splits_same_coloured_objects_apart():
    tokens, which = _two_blobs()
    same = tokens.clone()
    same[0, which == 2] = tokens[0, which == 1][0]                  # both blobs the same colour
    group = kmeans_logits(same, (8, 8), groups=9, position_weight=0.5)[0].argmax(dim=0)
    assert set(group[which == 1].tolist()).isdisjoint(group[which == 2].tolist())


def test_kmeans_needs_a_square_number_of_groups():
    with pytest.raises(ValueError, match="square number"):
        kmeans_logits(torch.randn(1, 16, 8), (4, 4), groups=8)
    with pytest.raises(UserError, match="num_group_tokens\\[0\\]=8 is not a square number"):
        HeadModel(assign="kmeans", depths=[1, 0], num_heads=[2, 2], num_group_tokens=[8, 0],
                  num_output_groups=[8], groups_min=2).validate()
    with pytest.raises(UserError, match="image_embed=tokens needs head.embed=pooled"):
        HeadModel(image_embed="tokens", embed="groups").validate()


def test_kmeans_head_drops_its_unused_projections_and_trains_the_rest():
    from clipheads.core.backbone import FrozenCLIP
    from clipheads.tasks.groupvit.head import GroupingHead
    torch.manual_seed(0)
    cfg = HeadModel(width=32, tap=1, depths=[1, 0], num_heads=[2, 2], num_group_tokens=[9, 0],
                    num_output_groups=[9], groups_min=2, proj_hidden=32, assign="kmeans", image_embed="tokens")
    head = GroupingHead(cfg, FrozenCLIP.from_spec("tiny-world")).train()
    keys = head.state_dict().keys()
    assert not any("assign.q_proj" in k or "assign.k_proj" in k for k in keys)
    assert any("assign.v_proj" in k for k in keys)
    out = head(torch.randn(2, 3, 96, 96))
    assert out["groups"].shape[:2] == (2, 9)
    hard = head.group(torch.randn(2, 3, 96, 96)).assignments[0].hard.detach()
    assert torch.equal(hard.sum(dim=1), torch.ones(2, 144))            # one group per token
    (out["image"].square().sum() + out["groups"].square().sum()).backward()
    # the partition is fixed by the frozen tokens; what learns is the per-token feature and
    # its projection into CLIP space (the pooled group embeddings), not the group queries
    for part in (head.in_proj, head.token_mlp, head.out_proj):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert head.stages.layers[0].group_token.grad is None


def test_group_mil_loss_is_the_max_group_bce_over_every_noun_prompt_of_the_batch():
    torch.manual_seed(1)
    e = F.normalize(torch.randn(3, 8), dim=-1)                        # nouns 10, 20, 30
    prompts = torch.stack([e[[0, 1]], e[[2, 2]]])                     # captions {10, 20}, {30}
    ids = torch.tensor([[10, 20], [30, -1]])
    valid = torch.tensor([[True, True], [True, False]])
    groups = torch.randn(2, 4, 8, requires_grad=True)
    loss = group_mil_loss(groups, prompts, valid, ids)
    best = (F.normalize(groups, dim=-1) @ e.T).max(dim=1).values        # [2 images, 3 nouns]
    present = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    manual = -(present * F.logsigmoid(10 * best - 5) + (1 - present) * F.logsigmoid(-(10 * best - 5))).mean()
    assert torch.allclose(loss, manual, atol=1e-6)
    loss.backward()
    assert groups.grad.abs().sum() > 0
    # each image holding exactly its nouns (and nothing like the others) scores lower
    good = torch.stack([torch.cat([e[[0, 1]], -e[[2, 2]]]), torch.cat([e[[2]], -e[[0, 1, 1]]])])
    assert group_mil_loss(good, prompts, valid, ids) < loss


def test_group_mil_loss_without_nouns_is_an_exact_zero():
    groups = torch.randn(2, 4, 8, requires_grad=True)
    loss = group_mil_loss(groups, torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool),
                          torch.full((2, 3), -1))
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.equal(groups.grad, torch.zeros_like(groups))
