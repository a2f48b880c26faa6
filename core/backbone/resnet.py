"""Walking an open_clip ModifiedResNet stage by stage, and its attention pool's value path.

Dense embeddings follow MaskCLIP (Zhou et al., ECCV 2022; chongzhou96/MaskCLIP,
`MaskClipHead.forward` in mmseg/models/decode_heads/maskclip_head.py, default
`attn_pooling=False`): the attention pool's `v_proj` then `c_proj`, as 1x1 convolutions on
every position of the last stage's feature map, with no positional embedding and no mean
token. Adding the pool's (resized) positional embedding first is kept as a variant
(`positional=True`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .pos_embed import resize_grid_positions

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def stages(visual: nn.Module) -> list[nn.Module]:
    return [visual.stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4]


def check_size(height: int, width: int) -> None:
    if height < 32 or width < 32:
        raise UserError(f"image of {height}x{width} pixels is smaller than the ResNet's "
                        "32-pixel stride; resize it up first")


def _pool_positions(pool: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    pos = pool.positional_embedding
    side = int(round((pos.shape[0] - 1) ** 0.5))
    if (side, side) == tuple(grid):
        return pos
    # as open_clip.model.resize_pos_embed resizes ViT position embeddings (antialiased bicubic)
    patch = resize_grid_positions(pos[1:], (side, side), grid, antialias=True)
    return torch.cat([pos[:1], patch], dim=0)


def attention_pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's QKV attention pool for any spatial size (position embedding resized)."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    tokens = tokens + _pool_positions(pool, (h, w))[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=c,
        num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]


def value_path(pool: nn.Module, x: torch.Tensor, positional: bool = False) -> torch.Tensor:
    """MaskCLIP for ResNets: c_proj(v_proj(x)) at every position -> [B, D, h, w].

    `positional=True` adds the pool's positional embedding (resized to the grid) to each
    position first: not MaskCLIP, a variant kept for comparison."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    if positional:
        tokens = tokens + _pool_positions(pool, (h, w))[1:].to(x.dtype)
    dense = pool.c_proj(pool.v_proj(tokens))
    return dense.transpose(1, 2).reshape(b, -1, h, w)
