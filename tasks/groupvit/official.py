"""The paper's GroupViT (NVlabs `MultiLabelContrastive` with a `GroupViT` image encoder
and a `TextTransformer`), with the official parameter names, so the released
checkpoints load key for key (`weights.py`) and transformers' port converts both ways
(`hf.py`).

The text tower is open_clip's transformer (same block layout and key names as CLIP's:
the official one is CLIP's code), with QuickGELU, a causal mask, EOT pooling (the
highest token id) and no projection matrix: the projector follows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import QuickGELU, Transformer
from torch import nn

from clipheads.core.backbone.pos_embed import resize_grid_positions
from clipheads.core.errors import UserError

from .blocks import Assignment, GroupingBlock, GroupingLayer, group_projector, init_weights
from .config import OfficialModel


@dataclass
class Grouped:
    """One forward pass of a grouping encoder.

    `groups` [B, G, C]: the final group features (normalised by the encoder's last LN);
    `assignments`: each grouping stage's decision; `grid`: the patch grid (h, w);
    `tokens`: the input tokens [B, N, C'] when a head pools them per group."""

    groups: torch.Tensor
    assignments: list[Assignment]
    grid: tuple[int, int]
    tokens: torch.Tensor | None = None


def training_outputs(model: nn.Module, pixels: torch.Tensor, keep: int | None) -> dict[str, torch.Tensor]:
    """Training forward of either GroupViT model: embeddings and logit scales in one call,
    so every parameter a loss reads is used inside the (DDP-wrapped) forward."""
    image, groups = model.embed_groups(model.group(pixels, keep))
    scale, multi = model.scales()
    return {"image": image, "groups": groups, "scale": scale, "multi_scale": multi}


class GroupingStages(nn.Module):
    """GroupViT's stages (`layers`) and final LayerNorm (`norm`) over a token sequence;
    shared by the official image encoder and the frozen-CLIP grouping head."""

    def __init__(self, dim: int, depths: list[int], num_heads: list[int], num_group_tokens: list[int],
                 num_output_groups: list[int], hard: bool = True):
        super().__init__()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            downsample = None
            if i < len(depths) - 1:
                downsample = GroupingBlock(dim, dim, num_heads[i], num_group_tokens[i], num_output_groups[i],
                                           hard=hard, gumbel=hard)
            projector = None
            if i > 0 and num_group_tokens[i] > 0:
                projector = group_projector(num_group_tokens[i - 1], dim, num_group_tokens[i], dim)
            self.layers.append(GroupingLayer(dim, depth, num_heads[i], num_group_tokens[i], downsample,
                                             projector))
        self.norm = nn.LayerNorm(dim)

    def group_tokens(self, x: torch.Tensor, keep: int | None = None,
                     first_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Assignment]]:
        """Tokens [B, N, C] -> (normalised final groups [B, G, C], per-stage assignments).
        `keep` limits the last grouping stage to the groups that cover most tokens;
        `first_logits` [B, G, N] decide the first stage's assignment (`assign: kmeans`)."""
        group, assignments = None, []
        last = len(self.layers) - 2
        for i, layer in enumerate(self.layers):
            x, group, assignment = layer(x, group, keep=keep if i == last else None,
                                         assign_logits=first_logits if i == 0 else None)
            if assignment is not None:
                assignments.append(assignment)
        return self.norm(x), assignments


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, then LayerNorm (GroupViT's patch_norm)."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = pixels.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise UserError(f"image of {h}x{w} pixels is smaller than GroupViT's {self.patch_size}x"
                            f"{self.patch_size} patch; resize it up first")
        x = self.proj(pixels)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class GroupViTVision(GroupingStages):
    """GroupViT's image encoder: patches + learned positions (resized bicubically, without
    antialiasing, as the official code does for other input sizes) + grouping stages."""

    def __init__(self, cfg: OfficialModel):
        super().__init__(cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.num_group_tokens, cfg.num_output_groups)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.base_grid = (cfg.image_size // cfg.patch_size,) * 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.base_grid[0] * self.base_grid[1], cfg.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_weights)

    @property
    def width(self) -> int:
        return self.norm.normalized_shape[0]

    def forward(self, pixels: torch.Tensor, keep: int | None = None) -> Grouped:
        x, grid = self.patch_embed(pixels)
        x = x + resize_grid_positions(self.pos_embed[0], self.base_grid, grid, antialias=False)
        groups, assignments = self.group_tokens(x, keep)
        return Grouped(groups, assignments, grid)


class GroupViTText(nn.Module):
    """CLIP's text transformer as GroupViT trains it from scratch (QuickGELU, causal mask,
    EOT pooling; `width // 64` heads in the official code, `text_heads` here)."""

    def __init__(self, cfg: OfficialModel):
        super().__init__()
        self.context_length = cfg.context_length
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, act_layer=QuickGELU)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self._init(cfg)

    def _init(self, cfg: OfficialModel) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = cfg.text_width, cfg.text_layers
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)

    @property
    def width(self) -> int:
        return self.ln_final.normalized_shape[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.context_length:
            raise UserError(f"text tokens of length {tokens.shape[-1]}; this GroupViT reads "
                            f"{self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]


class ProjectMLP(nn.Module):
    """Conv1d(k=1) -> BatchNorm -> ReLU -> Conv1d(k=1) over [B, C] or [B, L, C] (the
    official projector; 1x1 convolutions so BatchNorm sees every token as a sample)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.linear_hidden = nn.Sequential(nn.Conv1d(in_dim, hidden, kernel_size=1), nn.BatchNorm1d(hidden),
                                           nn.ReLU(inplace=True))
        self.linear_out = nn.Conv1d(hidden, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.ndim == 2
        x = rearrange(x.unsqueeze(1) if flat else x, "b l c -> b c l")
        x = rearrange(self.linear_out(self.linear_hidden(x)), "b c l -> b l c")
        return x.squeeze(1) if flat else x


class GroupViT(nn.Module):
    """The whole official model. `logit_scale` (init log(1/0.07), used clamped at 100);
    `multi_label_logit_scale` exists when the model trains the multi-label loss."""

    def __init__(self, cfg: OfficialModel):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.img_encoder = GroupViTVision(cfg)
        self.text_encoder = GroupViTText(cfg)
        self.img_projector = ProjectMLP(cfg.embed_dim, cfg.proj_hidden, cfg.output_dim)
        self.text_projector = ProjectMLP(cfg.text_width, cfg.proj_hidden, cfg.output_dim)
        init = math.log(1 / cfg.contrast_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        if cfg.multi_label > 0:
            self.multi_label_logit_scale = nn.Parameter(torch.tensor(init))
        self.mean, self.std = tuple(cfg.mean), tuple(cfg.std)

    @property
    def embed_dim(self) -> int:
        return self.cfg.output_dim

    def group(self, pixels: torch.Tensor, keep: int | None = None) -> Grouped:
        return self.img_encoder(pixels, keep)

    def forward(self, pixels: torch.Tensor, keep: int | None = None) -> dict[str, torch.Tensor]:
        return training_outputs(self, pixels, keep)

    def embed_groups(self, grouped: Grouped) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embedding [B, E], group embeddings [B, G, E]), both un-normalised: the
        image embedding projects the mean of the groups, each group projects itself."""
        return self.img_projector(grouped.groups.mean(dim=1)), self.img_projector(grouped.groups)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_groups(self.group(pixels))[0]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., L] token ids -> [..., E] (extra leading axes: prompts per caption)."""
        lead = tokens.shape[:-1]
        out = self.text_projector(self.text_encoder(tokens.reshape(-1, tokens.shape[-1])))
        return out.reshape(*lead, out.shape[-1])

    def scales(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(contrastive, multi-label) logit scales, exponentiated and clamped at 100."""
        main = self.logit_scale.exp().clamp(max=100)
        multi = getattr(self, "multi_label_logit_scale", None)
        return main, None if multi is None else multi.exp().clamp(max=100)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
