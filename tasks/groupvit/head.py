"""The frozen-CLIP grouping head: GroupViT's grouping stages over the patch tokens of a
frozen CLIP image tower, with group features mapped into the CLIP joint space, where
the text bank's label embeddings already live. Segmentation emerges from the grouping
(trained on image-text pairs only), without retraining CLIP.

`assign: kmeans` decides the first stage's assignment by soft k-means over the frozen
tokens (`kmeans.py`); `image_embed: tokens` embeds the image from all its tokens, so the
caption losses do not depend on (and cannot pull together) the partition.

The head's last grouping stage is built with `num_output_groups[-1]` groups; at
inference (and, sampled, in training) it can keep fewer (`keep`), the ones whose soft
assignment covers most of the image: any number of output groups up to that size.
"""
from __future__ import annotations

import torch
from torch import nn

from clipheads.core.errors import UserError

from .blocks import chain_assignments, init_weights
from .kmeans import kmeans_logits
from .config import HeadModel
from .official import Grouped, GroupingStages, training_outputs


class GroupingHead(nn.Module):
    """Backbone tokens -> groups -> (image embedding, group embeddings) in CLIP space.

    The backbone is held (not registered), so the head's state dict is the head alone."""

    def __init__(self, cfg: HeadModel, backbone):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self._backbone = [backbone]
        widths = backbone.layer_widths()
        self.tap = cfg.tap if cfg.tap >= 0 else len(widths) + cfg.tap
        if not 0 <= self.tap < len(widths):
            raise UserError(f"head.tap={cfg.tap}: the backbone has {len(widths)} blocks")
        self.in_proj = nn.Sequential(nn.LayerNorm(widths[self.tap]), nn.Linear(widths[self.tap], cfg.width))
        self.stages = GroupingStages(cfg.width, cfg.depths, cfg.num_heads, cfg.num_group_tokens,
                                     cfg.num_output_groups)
        self.out_proj = nn.Sequential(nn.Linear(cfg.width, cfg.proj_hidden), nn.GELU(),
                                      nn.Linear(cfg.proj_hidden, backbone.embed_dim))
        if cfg.embed == "pooled":   # per-token features that groups average before the projection
            self.token_mlp = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.width), nn.GELU(),
                                           nn.Linear(cfg.width, cfg.width))
        self.logit_scale = nn.Parameter(torch.tensor(2.659260036932778))  # log(1/0.07)
        self.multi_label_logit_scale = nn.Parameter(torch.tensor(2.659260036932778))
        for layer in self.stages.layers:   # the first stage's tokens start random, later ones zero
            if layer.group_token is not None and layer.group_projector is None:
                nn.init.trunc_normal_(layer.group_token, std=0.02)
        self.apply(init_weights)
        if cfg.assign == "kmeans":
            self.stages.layers[0].downsample.assign.drop_query_key()

    @property
    def backbone(self):
        return self._backbone[0]

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def max_groups(self) -> int:
        return self.cfg.num_output_groups[-1]

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.backbone.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.backbone.std)

    def tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The frozen tower's tokens of block `tap`, [B, N, C], and their grid."""
        with torch.no_grad():
            out = self.backbone.forward_intermediates(pixels, layers=[self.tap], fmt="NCHW")
        grid = tuple(out.tokens[0].shape[-2:])
        return out.tokens[0].flatten(2).transpose(1, 2).float(), grid

    def group(self, pixels: torch.Tensor, keep: int | None = None) -> Grouped:
        if keep is not None and not 1 <= keep <= self.max_groups:
            raise UserError(f"--groups {keep}: this head outputs 1..{self.max_groups} groups")
        frozen, grid = self.tokens(pixels)
        first = None
        if self.cfg.assign == "kmeans":
            first = kmeans_logits(frozen, grid, self.cfg.num_group_tokens[0], self.cfg.kmeans_position,
                                  self.cfg.kmeans_iters, self.cfg.kmeans_scale)
        x = self.in_proj(frozen)
        groups, assignments = self.stages.group_tokens(x, keep, first)
        return Grouped(groups, assignments, grid, x if self.cfg.embed == "pooled" else None)

    def forward(self, pixels: torch.Tensor, keep: int | None = None) -> dict[str, torch.Tensor]:
        return training_outputs(self, pixels, keep)

    def embed_groups(self, grouped: Grouped) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embedding [B, E], group embeddings [B, G, E]), un-normalised. `groups`:
        the image embedding projects the mean group feature, as the official model does;
        `pooled`: each group projects the mean of its tokens, the image is the mean of the
        non-empty groups (`image_embed: groups`) or the projected mean of all its tokens
        (`image_embed: tokens`)."""
        if grouped.tokens is None:
            return self.out_proj(grouped.groups.mean(dim=1)), self.out_proj(grouped.groups)
        hard = chain_assignments([a.hard for a in grouped.assignments])          # [B, N, G] one-hot
        weights = hard / (hard.sum(dim=1, keepdim=True) + 1.0)                   # GroupViT's (count + 1)
        features = self.token_mlp(grouped.tokens)                                # [B, N, C]
        groups = self.out_proj(weights.transpose(1, 2) @ features)               # [B, G, E]
        if self.cfg.image_embed == "tokens":
            return self.out_proj(features.mean(dim=1)), groups
        used = (hard.sum(dim=1) > 0).to(groups.dtype).detach().unsqueeze(-1)   # empty groups do not vote
        return (groups * used).sum(dim=1) / used.sum(dim=1).clamp(min=1), groups

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_groups(self.group(pixels))[0]

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logit_scale.exp().clamp(max=100), self.multi_label_logit_scale.exp().clamp(max=100)

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
