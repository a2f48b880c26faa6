"""Walking an open_clip VisionTransformer block by block.

open_clip's own forward fixes the input size and never returns attention weights; dense
heads need other sizes (LSeg at 480, sliding windows) and CLIPasso needs differentiable
attention. So this module re-runs the tower from its own modules and parameters: same
arithmetic, position embeddings interpolated to the input's grid, attention computed from
the block's own in/out projections when asked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .pos_embed import resize_grid_positions


def patch_grid(visual: nn.Module, height: int, width: int) -> tuple[int, int]:
    ph, pw = visual.patch_size
    if height < ph or width < pw:
        raise UserError(f"image of {height}x{width} pixels is smaller than the backbone's "
                        f"{ph}x{pw} patch; resize it up first")
    return height // ph, width // pw


def position_embedding(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The tower's position embedding, bicubically resized to `grid` when it differs."""
    pos = visual.positional_embedding
    if tuple(grid) == tuple(visual.grid_size):
        return pos
    # exactly open_clip.model.resize_pos_embed (what open_clip does when it loads weights
    # into a model of another image size): antialiased bicubic
    patch_pos = resize_grid_positions(pos[1:], visual.grid_size, grid, antialias=True)
    cls_pos = pos[:1]
    return torch.cat([cls_pos, patch_pos], dim=0)


def embed(visual: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch + class tokens with position embeddings and ln_pre: the input of block 0."""
    grid = patch_grid(visual, pixels.shape[-2], pixels.shape[-1])
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + position_embedding(visual, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), grid


def blocks(visual: nn.Module) -> nn.ModuleList:
    return visual.transformer.resblocks


def _split_qkv(block: nn.Module, y: torch.Tensor):
    attn: nn.MultiheadAttention = block.attn
    if not isinstance(attn, nn.MultiheadAttention):
        raise UserError("attention maps and dense embeddings need open_clip's default ViT "
                        "blocks; this architecture uses custom attention blocks")
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    b, n, c = y.shape
    shape = (b, n, heads, c // heads)
    return [t.reshape(shape).transpose(1, 2) for t in (q, k, v)], attn


def block_with_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual block, returning its attention weights [B, heads, L, L] (differentiable)."""
    y = block.ln_1(x)
    (q, k, v), attn = _split_qkv(block, y)
    weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(attn.out_proj(out))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def block_value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: attention replaced by each token's own value (q-k dropped).

    As MaskCLIP's `TransformerEncoderLayer.forward(return_qkv=True)` (chongzhou96/MaskCLIP,
    mmseg/models/backbones/vit.py): v = out_proj(v_proj(ln_1(x))), then the residual
    v + x, then v + mlp(ln_2(v)); `project` then applies ln_post and the projection."""
    y = block.ln_1(x)
    (_, _, v), attn = _split_qkv(block, y)
    out = v.transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def project(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post + projection into the joint space, for any token set."""
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens
