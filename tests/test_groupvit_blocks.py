"""GroupViT's grouping mechanics: Gumbel straight-through assignment, group selection,
chained assignments, position resize, and the multi-label loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipheads.core.backbone.pos_embed import resize_grid_positions
from clipheads.tasks.groupvit.blocks import AssignAttention, GroupingBlock, chain_assignments, gumbel_noise
from clipheads.tasks.groupvit.config import OfficialModel
from clipheads.tasks.groupvit.losses import groupvit_losses, multi_label_loss
from clipheads.tasks.groupvit.official import GroupViT


def test_gumbel_straight_through_is_one_hot_forward_and_differentiable():
    torch.manual_seed(0)
    block = GroupingBlock(dim=16, out_dim=16, num_heads=2, num_group_token=6, num_output_group=4).train()
    x = torch.randn(3, 20, 16, requires_grad=True)
    groups = torch.randn(3, 6, 16, requires_grad=True)
    out, a = block(x, groups)
    hard = a.hard.detach()
    assert torch.equal(hard.sum(dim=1), torch.ones(3, 20))            # every token in exactly one group
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert not torch.allclose(a.hard, a.soft)                         # the one-hot, not the softmax, is used
    out.square().sum().backward()
    assert groups.grad is not None and groups.grad.abs().sum() > 0    # gradients reach the group tokens ...
    assert x.grad is not None and x.grad.abs().sum() > 0              # ... and the image tokens
    # through the assignment itself (straight-through), not only through the values
    assign = block.assign
    assert assign.q_proj.weight.grad is not None and assign.q_proj.weight.grad.abs().sum() > 0
    assert assign.k_proj.weight.grad.abs().sum() > 0


def test_gumbel_noise_is_finite_and_training_differs_from_eval():
    noise = gumbel_noise(torch.zeros(100000))
    assert torch.isfinite(noise).all()
    assert abs(noise.mean().item() - 0.5772) < 0.02                    # Euler-Mascheroni: the Gumbel mean
    torch.manual_seed(1)
    assign = AssignAttention(8)
    g, x = torch.randn(1, 5, 8), torch.randn(1, 40, 8)
    assign.eval()
    _, a = assign(g, x)
    assert torch.equal(a.hard, F.one_hot(a.soft.argmax(1), 5).transpose(1, 2).float())   # eval: hard argmax
    assign.train()
    draws = {tuple(assign(g, x)[1].hard.argmax(1).flatten().tolist()) for _ in range(5)}
    assert len(draws) > 1                                                # training samples assignments


def test_assignment_normalised_by_token_count_plus_one():
    torch.manual_seed(2)
    assign = AssignAttention(8).eval()
    g, x = torch.randn(1, 3, 8), torch.randn(1, 10, 8)
    out, a = assign(g, x)
    w = a.hard / (a.hard.sum(-1, keepdim=True) + 1.0)
    assert torch.allclose(out, assign.proj(w @ assign.v_proj(x)), atol=1e-6)


def test_keep_selects_the_groups_that_cover_most_tokens():
    torch.manual_seed(3)
    block = GroupingBlock(dim=16, out_dim=16, num_heads=2, num_group_token=8, num_output_group=8).eval()
    x, groups = torch.randn(2, 30, 16), torch.randn(2, 8, 16)
    full, a_full = block(x, groups)
    part, a_part = block(x, groups, keep=3)
    assert part.shape == (2, 3, 16) and a_part.soft.shape == (2, 3, 30)
    area = a_full.soft.sum(-1)
    for b in range(2):
        chosen = area[b].topk(3).indices.sort().values
        xs, q = block.queries(x[b:b + 1], groups[b:b + 1])
        logits = block.assign.logits(q, xs)[0, chosen]
        assert torch.allclose(a_part.soft[b], logits.softmax(0), atol=1e-6)
    assert torch.allclose(a_part.soft.sum(1), torch.ones(2, 30), atol=1e-6)


def test_chained_assignment_rows_are_distributions():
    a0 = torch.rand(2, 6, 20).softmax(1)
    a1 = torch.rand(2, 3, 6).softmax(1)
    chained = chain_assignments([a0, a1])
    assert chained.shape == (2, 20, 3)
    assert torch.allclose(chained.sum(-1), torch.ones(2, 20), atol=1e-6)


def test_position_resize_is_plain_bicubic_for_groupvit_and_antialiased_for_clip():
    pos = torch.randn(16, 8)
    grid = pos.reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    plain = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(30, 8)
    assert torch.allclose(resize_grid_positions(pos, (4, 4), (6, 5), antialias=False), plain)
    assert not torch.allclose(resize_grid_positions(pos, (4, 4), (6, 5), antialias=True), plain)
    assert resize_grid_positions(pos, (4, 4), (4, 4), antialias=False) is pos


def _official_multi_label(image, prompts, scale):
    """The official formula (NVlabs MultiLabelContrastive.multi_label_loss, one process):
    soft-target CE image->prompts (1/L on own prompts) and prompt->image."""
    b, p, _ = prompts.shape
    image, prompts = F.normalize(image, dim=-1), F.normalize(prompts, dim=-1)
    flat = prompts.reshape(b * p, -1)
    logits_img = scale * image @ flat.T
    target_img = torch.kron(torch.eye(b), torch.full((1, p), 1.0 / p))
    loss_img = (-target_img * logits_img.log_softmax(-1)).sum(-1).mean()
    logits_txt = scale * flat @ image.T
    target_txt = torch.kron(torch.eye(b), torch.ones(p, 1))
    loss_txt = (-target_txt * logits_txt.log_softmax(-1)).sum(-1).mean()
    return 0.5 * (loss_img + loss_txt)


def test_multi_label_loss_equals_the_official_formula_when_every_prompt_exists():
    torch.manual_seed(4)
    image, prompts = torch.randn(5, 12), torch.randn(5, 3, 12)
    valid = torch.ones(5, 3, dtype=torch.bool)
    ours = multi_label_loss(image, prompts, valid, torch.tensor(14.0))
    assert torch.allclose(ours, _official_multi_label(image, prompts, 14.0), atol=1e-5)


def test_captions_without_nouns_are_skipped_never_nan():
    torch.manual_seed(5)
    image = torch.randn(4, 12, requires_grad=True)
    prompts = torch.randn(4, 3, 12, requires_grad=True)
    none = torch.zeros(4, 3, dtype=torch.bool)
    loss = multi_label_loss(image, prompts, none, torch.tensor(10.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(image.grad).all()
    some = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    partial = multi_label_loss(image, prompts, some, torch.tensor(10.0))
    # equal to the loss over the captions that have nouns, with their prompts only
    keep_img = image[[0, 2]]
    ref_rows = [(0, 0), (0, 1), (2, 0)]
    flat = F.normalize(torch.stack([prompts[i, j] for i, j in ref_rows]), dim=-1)
    logits = 10.0 * F.normalize(image, dim=-1) @ flat.T
    owner = torch.tensor([0, 0, 2])
    img_side = torch.stack([-(logits[0].log_softmax(-1)[:2]).mean(), -(logits[2].log_softmax(-1)[2])]).mean()
    txt_side = F.cross_entropy(logits.T, owner)
    assert torch.allclose(partial, 0.5 * (img_side + txt_side), atol=1e-5)
    del keep_img
    total = groupvit_losses(image, torch.randn(4, 12), torch.tensor(10.0), prompts, none, torch.tensor(10.0))
    assert torch.isfinite(total["loss"]) and total["multi_label"].item() == 0.0


@pytest.mark.parametrize("multi", [3, 0])
def test_official_model_logit_scales(multi):
    model = GroupViT(OfficialModel(image_size=32, patch_size=8, embed_dim=32, depths=[1, 1, 1], num_heads=[2, 2, 2],
                                   num_group_tokens=[8, 4, 0], num_output_groups=[8, 4], context_length=8,
                                   vocab_size=50, text_width=32, text_layers=1, text_heads=2, output_dim=16,
                                   proj_hidden=32, multi_label=multi))
    main, ml = model.scales()
    assert math.isclose(main.item(), 1 / 0.07, rel_tol=1e-5)
    assert (ml is None) == (multi == 0)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scales()[0].item() == 100.0


def test_group_noun_loss_counts_every_image_naming_the_noun_as_positive():
    from clipheads.tasks.groupvit.data import noun_id
    from clipheads.tasks.groupvit.losses import group_noun_loss
    torch.manual_seed(6)
    e = F.normalize(torch.randn(3, 16), dim=-1)                 # embeddings of three nouns
    circle, square, star = (noun_id(n) for n in ("circle", "square", "star"))
    assert noun_id("Circle") == circle and circle != square
    prompts = torch.stack([e[[0, 1]], e[[0, 2]], e[[1, 1]]])    # captions: {circle, square}, {circle, star}, {square}
    ids = torch.tensor([[circle, square], [circle, star], [square, -1]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    noise = 0.01 * torch.randn(3, 4, 16)
    good = torch.stack([torch.cat([e[[0, 1]], noise[0, :2]]), torch.cat([e[[0, 2]], noise[1, :2]]),
                        torch.cat([e[[1]], noise[2, :3]])])     # each image has a group per named noun
    bad = good[[2, 0, 1]]                                       # groups of the wrong images
    scale = torch.tensor(50.0)
    low = group_noun_loss(good, prompts, valid, ids, scale)
    assert low.item() < 0.05 and group_noun_loss(bad, prompts, valid, ids, scale).item() > 1.0
    # distinct nouns everywhere: plain cross-entropy of prompt -> its own image (max over groups)
    uniq = torch.arange(6).reshape(3, 2)
    ref_logits = scale * torch.einsum("bge,ne->nbg", F.normalize(good, dim=-1),
                                      F.normalize(prompts.reshape(6, -1), dim=-1)).max(-1).values
    keep = valid.reshape(-1)
    ref = F.cross_entropy(ref_logits[keep], torch.arange(3).repeat_interleave(2)[keep])
    assert torch.allclose(group_noun_loss(good, prompts, valid, uniq, scale), ref, atol=1e-5)
