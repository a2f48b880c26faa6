"""GroupViT's building blocks (Xu et al., CVPR 2022): transformer blocks over image and
group tokens, and the grouping block that assigns every token to one group.

Module and parameter names follow NVlabs/GroupViT, so its released checkpoints load
into these modules key for key. The assignment is the method's core:

- AssignAttention: one head, softmax over the *group* axis (tokens compete for groups,
  not groups for tokens); in training a Gumbel-softmax (tau=1) with a straight-through
  hard one-hot, at evaluation a hard argmax, also straight-through; the assignment is
  normalised by (sum over tokens + 1) before it averages the token values.
- GroupingBlock: group tokens mixed by a token-mixing MLP (S1 -> 0.5C -> S2), a
  post-norm cross-attention of the groups to the tokens, the assignment, then
  `proj(A v) + g` and a channel MLP (4C).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from clipheads.core.precision import full_precision
from clipheads.core.segmentation.argmax import channel_argmax


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (dropout-free: GroupViT trains with drop rate 0)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerMlp(Mlp):
    """An MLP over the token axis ([B, S, C] -> [B, S', C]): how GroupViT turns one
    stage's groups into the next stage's group tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention; `fused` keeps one `qkv` projection (self-attention blocks),
    otherwise separate q/k/v projections (cross-attention), as the checkpoints store them."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, fused: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.fused = fused
        if fused:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        h = self.num_heads
        if self.fused:
            q, k, v = rearrange(self.qkv(query), "b n (three h c) -> three b h n c", three=3, h=h)
        else:
            key = query if key is None else key
            q = rearrange(self.q_proj(query), "b n (h c) -> b h n c", h=h)
            k = rearrange(self.k_proj(key), "b n (h c) -> b h n c", h=h)
            v = rearrange(self.v_proj(key), "b n (h c) -> b h n c", h=h)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj(rearrange(attn @ v, "b h n c -> b n (h c)"))


class AttnBlock(nn.Module):
    """Pre-norm self-attention block over the concatenated image and group tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, fused=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Group tokens attend to image tokens; GroupViT normalises after the block (post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, key)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel samples; uniforms are kept inside (0, 1) so no log(0) reaches the
    logits (the reason the official code moved off `exponential_().log()`)."""
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand_like(like).clamp_(tiny, 1.0 - torch.finfo(like.dtype).eps)
    return -torch.log(-torch.log(u))


def straight_through_one_hot(soft: torch.Tensor, dim: int) -> torch.Tensor:
    """Forward: the one-hot of the argmax along `dim`; backward: the gradient of `soft`."""
    index = channel_argmax(soft, dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


@dataclass
class Assignment:
    """What a grouping block decided: `soft` [B, G, N] (softmax over groups, no noise)
    and `hard` [B, G, N] (the one-hot actually used, straight-through)."""

    soft: torch.Tensor
    hard: torch.Tensor


class AssignAttention(nn.Module):
    """Assign each of N tokens to one of G groups (one head; softmax over the group axis)."""

    def __init__(self, dim: int, qkv_bias: bool = True, hard: bool = True, gumbel: bool = True,
                 tau: float = 1.0, assign_eps: float = 1.0):
        super().__init__()
        self.scale = dim ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.hard, self.gumbel, self.tau, self.assign_eps = hard, gumbel, tau, assign_eps

    def drop_query_key(self) -> None:
        """For a stage whose logits always come from outside (`assign: kmeans`): remove the
        unused query/key projections, so no parameter sits outside the graph (DDP)."""
        self.q_proj = self.k_proj = None

    def logits(self, groups: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, G, N] group-token affinities (before the softmax over groups), always in
        fp32: near-ties decide which group a token joins, so they are not left to bf16."""
        if self.q_proj is None:
            raise RuntimeError("this assignment takes its logits from outside (assign: kmeans)")
        with full_precision(groups.device):
            q, k = self.q_proj(groups.float()), self.k_proj(tokens.float())
            return (q @ k.transpose(-2, -1)) * self.scale

    def forward(self, groups: torch.Tensor, tokens: torch.Tensor,
                logits: torch.Tensor | None = None) -> tuple[torch.Tensor, Assignment]:
        raw = self.logits(groups, tokens) if logits is None else logits
        soft = raw.softmax(dim=-2)
        if self.gumbel and self.training:
            noisy = ((raw + gumbel_noise(raw)) / self.tau).softmax(dim=-2)
            used = straight_through_one_hot(noisy, dim=-2) if self.hard else noisy
        else:
            used = straight_through_one_hot(soft, dim=-2) if self.hard else soft
        weights = used / (used.sum(dim=-1, keepdim=True) + self.assign_eps)
        out = self.proj(weights @ self.v_proj(tokens))
        return out, Assignment(soft=soft, hard=used)


class GroupingBlock(nn.Module):
    """S1 group tokens + N image tokens -> S2 group features (the next stage's tokens).

    `keep` (optional) keeps only that many of the S2 groups (those whose soft assignment
    covers most tokens), so a head can output fewer groups than it was built with."""

    def __init__(self, dim: int, out_dim: int, num_heads: int, num_group_token: int,
                 num_output_group: int, hard: bool = True, gumbel: bool = True, tau: float = 1.0):
        super().__init__()
        self.num_output_group = num_output_group
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_group_token, int(0.5 * dim), num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads)
        self.assign = AssignAttention(dim, hard=hard, gumbel=gumbel, tau=tau)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, 4 * dim, out_dim)
        self.reduction = nn.Identity() if out_dim == dim else nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, out_dim, bias=False))

    def project_group_tokens(self, group_tokens: torch.Tensor) -> torch.Tensor:
        """[B, S1, C] -> [B, S2, C] by mixing over the token axis."""
        mixed = self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2)
        return self.norm_post_tokens(mixed)

    def queries(self, x: torch.Tensor, group_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised image tokens, group queries after the cross-attention)."""
        x = self.norm_x(x)
        groups = self.project_group_tokens(self.norm_tokens(group_tokens))
        return x, self.pre_assign_attn(groups, x)

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor,
                keep: int | None = None, logits: torch.Tensor | None = None) -> tuple[torch.Tensor, Assignment]:
        """`logits` [B, S2, N], when given, decide the assignment instead of `assign.logits`."""
        x, groups = self.queries(x, group_tokens)
        if keep is not None and keep < groups.shape[1]:
            # keep the `keep` groups whose soft assignment covers most tokens, in their
            # original order; the softmax over groups is then taken among those alone
            logits = self.assign.logits(groups, x) if logits is None else logits
            index = logits.softmax(dim=-2).sum(dim=-1).topk(keep, dim=-1).indices.sort(dim=-1).values
            groups = torch.gather(groups, 1, index.unsqueeze(-1).expand(-1, -1, groups.shape[-1]))
            logits = torch.gather(logits, 1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        new_x, assignment = self.assign(groups, x, logits)
        new_x = new_x + groups
        return self.reduction(new_x) + self.mlp_channels(self.norm_new_x(new_x)), assignment


class GroupingLayer(nn.Module):
    """One stage: self-attention blocks over [image tokens; group tokens], then (except in
    the last stage) a grouping block that merges the image tokens into the groups."""

    def __init__(self, dim: int, depth: int, num_heads: int, num_group_token: int,
                 downsample: GroupingBlock | None = None, group_projector: nn.Module | None = None,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.num_group_token = num_group_token
        if num_group_token > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim))
            if group_projector is None:  # a stage fed by a projector starts from zero tokens
                nn.init.trunc_normal_(self.group_token, std=0.02)
        else:
            self.group_token = None
        self.blocks = nn.ModuleList(AttnBlock(dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.downsample = downsample
        self.group_projector = group_projector

    def forward(self, x: torch.Tensor, prev_group_token: torch.Tensor | None = None,
                keep: int | None = None, assign_logits: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, Assignment | None]:
        """(next tokens, this stage's group tokens, the assignment or None); `assign_logits`
        [B, G, N] replaces the grouping block's own query-key logits."""
        group = None
        if self.group_token is not None:
            group = self.group_token.expand(x.shape[0], -1, -1)
            if self.group_projector is not None:
                group = group + self.group_projector(prev_group_token)
            x = torch.cat([x, group], dim=1)
        for block in self.blocks:
            x = block(x)
        if group is not None:
            x, group = x[:, :-self.num_group_token], x[:, -self.num_group_token:]
        if self.downsample is None:
            return x, group, None
        x, assignment = self.downsample(x, group, keep=keep, logits=assign_logits)
        return x, group, assignment


def group_projector(prev_tokens: int, prev_dim: int, tokens: int, dim: int) -> nn.Module:
    """The previous stage's groups -> this stage's extra group tokens (LN + token mixer)."""
    layers: list[nn.Module] = [nn.LayerNorm(prev_dim), MixerMlp(prev_tokens, prev_dim // 2, tokens)]
    if dim != prev_dim:
        layers += [nn.LayerNorm(prev_dim), nn.Linear(prev_dim, dim, bias=False)]
    return nn.Sequential(*layers)


def chain_assignments(assignments: list[torch.Tensor]) -> torch.Tensor:
    """Per-stage soft assignments [B, G_i, N_i] (N_{i+1} = G_i) -> tokens to final groups
    [B, N_0, G_last], the product the official zero-shot protocol argmaxes."""
    chained = assignments[0].transpose(1, 2)
    for a in assignments[1:]:
        chained = chained @ a.transpose(1, 2)
    return chained


def init_weights(module: nn.Module) -> None:
    """GroupViT's initialisation: truncated-normal linears (std .02), zero biases, unit LNs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


__all__ = ["Assignment", "AssignAttention", "AttnBlock", "CrossAttnBlock", "GroupingBlock", "GroupingLayer",
           "Mlp", "MixerMlp", "chain_assignments", "group_projector", "gumbel_noise", "init_weights",
           "straight_through_one_hot"]
