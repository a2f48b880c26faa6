"""CLIP4Clip's similarity heads over frozen CLIP frame features.

Every head sees frame features [B, T, D] (the CLIP image embedding of each sampled frame,
unnormalised) and a frame mask [B, T] (True = a real frame, False = zero padding). The
"loose" heads (meanP, seqLSTM, seqTransf) turn them into one video embedding, so a query
is a dot product against a stored index; tightTransf is a cross-encoder that must see
every (text, video) pair: O(texts x videos) forward passes.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

MASK_VALUE = -1_000_000.0   # the official additive attention mask for padded frames


def masked_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """meanP: normalise each frame, mean over the real frames, renormalise -> [B, D]."""
    frames = F.normalize(frames, dim=-1)
    weights = mask.to(frames.dtype).unsqueeze(-1)
    pooled = (frames * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.normalize(pooled, dim=-1)


class MeanP(nn.Module):
    """No temporal parameters: the video is the mean of its frames."""

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return frames


class SeqLSTM(nn.Module):
    """One LSTM layer over the real frames (packed by length), plus the input (residual)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=1, batch_first=True)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=frames.shape[1])
        return out + frames


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TemporalBlock(nn.Module):
    """The official temporal/cross block: a CLIP residual attention block with QuickGELU and
    LayerNorm eps 1e-12 whatever the backbone uses; parameter names match CLIP's text
    blocks (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj), so those load into it as they are."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim, eps=1e-12)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(dim, 4 * dim)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * dim, dim))]))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """x [B, L, D]; additive_mask [B, L, L] (0 or MASK_VALUE)."""
        h = self.ln_1(x)
        mask = additive_mask.to(x.dtype).repeat_interleave(self.heads, dim=0)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


def padding_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] bool -> [B, L, L] additive: every query ignores padded keys."""
    b, n = mask.shape
    return ((1.0 - mask.to(dtype))[:, None, :] * MASK_VALUE).expand(b, n, n)


def text_block_states(text_blocks: nn.ModuleList, layers: int) -> list[dict[str, torch.Tensor]]:
    """State dicts of CLIP text blocks 0..layers-1 for temporal blocks (the paper's init);
    a backbone with fewer text blocks repeats its last one."""
    keep = ("ln_1.", "attn.", "ln_2.", "mlp.")
    out = []
    for i in range(layers):
        sd = text_blocks[min(i, len(text_blocks) - 1)].state_dict()
        extra = [k for k in sd if not k.startswith(keep)]
        if extra:
            raise ValueError(f"text block has parameters a temporal block cannot take: {extra[:3]}")
        out.append({k: v.detach().clone() for k, v in sd.items()})
    return out


class TemporalTransformer(nn.Module):
    """Position embeddings + TemporalBlocks, the shared body of seqTransf and tightTransf."""

    def __init__(self, dim: int, layers: int, heads: int, positions: int, dropout: float = 0.0):
        super().__init__()
        self.position_embeddings = nn.Embedding(positions, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TemporalBlock(dim, heads) for _ in range(layers))

    def init_from_clip_text(self, text_positions: torch.Tensor, text_blocks: nn.ModuleList) -> None:
        n = min(self.position_embeddings.num_embeddings, text_positions.shape[0])
        with torch.no_grad():
            self.position_embeddings.weight[:n].copy_(text_positions[:n])
        for block, state in zip(self.blocks, text_block_states(text_blocks, len(self.blocks))):
            block.load_state_dict(state)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(f"{n} positions, the head holds {self.position_embeddings.num_embeddings}")
        x = self.dropout(x + self.position_embeddings(torch.arange(n, device=x.device))[None].to(x.dtype))
        additive = padding_mask(mask, x.dtype)
        for block in self.blocks:
            x = block(x, additive)
        return x


class SeqTransf(nn.Module):
    """Frame position embeddings + 4 temporal blocks over the frames, plus the input
    (residual); meanP then pools. Initialised from CLIP's text tower (see TemporalTransformer)."""

    def __init__(self, dim: int, layers: int, heads: int, positions: int):
        super().__init__()
        self.transformer = TemporalTransformer(dim, layers, heads, positions)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.transformer(frames, mask) + frames


class CrossEncoder(nn.Module):
    """tightTransf: [text EOT; frames] through position embeddings and temporal blocks,
    the first token pooled (LayerNorm, Linear, QuickGELU), Linear -> one logit per pair.
    Dropout 0.1 after the position embeddings, as the official cross config."""

    def __init__(self, dim: int, layers: int, heads: int, positions: int):
        super().__init__()
        self.transformer = TemporalTransformer(dim, layers, heads, positions, dropout=0.1)
        self.ln_pool = nn.LayerNorm(dim, eps=1e-12)
        self.pool = nn.Linear(dim, dim)
        self.act = QuickGELU()
        self.similarity_dense = nn.Linear(dim, 1)

    def forward(self, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text [Q, D], frames [V, T, D], mask [V, T] -> logits [Q, V]."""
        q, (v, t, d) = text.shape[0], frames.shape
        x = torch.cat([text[:, None, None, :].expand(q, v, 1, d), frames[None].expand(q, v, t, d)], dim=2)
        m = torch.cat([mask.new_ones(v, 1), mask], dim=1)[None].expand(q, v, t + 1)
        out = self.transformer(x.reshape(q * v, t + 1, d), m.reshape(q * v, t + 1))
        pooled = self.act(self.pool(self.ln_pool(out)[:, 0]))
        return self.similarity_dense(pooled).view(q, v)
