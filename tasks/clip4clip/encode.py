"""Frozen-CLIP features of videos (decoded in DataLoader workers) and captions.

A video that cannot be decoded is reported with its reason and left out, never turned
into zeros (the official loader's zeros become NaN losses and meaningless ranks).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from clipheads.core.data.errors import CorruptSample

from .frames import FrameTransform, pad_frames, read_clip
from .index import batched

LOGGER = logging.getLogger("clipheads.clip4clip")


class ClipFrames(Dataset):
    """Item i: (i, pixels [max_frames, 3, S, S], mask [max_frames]) or (i, None, reason)."""

    def __init__(self, paths: Sequence[Path], transform: FrameTransform, max_frames: int, slice_framepos: int):
        self.paths, self.transform = list(paths), transform
        self.max_frames, self.slice_framepos = max_frames, slice_framepos

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            frames, _ = read_clip(self.paths[i], self.max_frames, self.slice_framepos)
            if min(frames.shape[1:3]) < 1:
                raise CorruptSample(self.paths[i], "frames have no pixels")
        except CorruptSample as exc:
            return i, None, exc.reason
        pixels, mask = pad_frames(self.transform(frames), self.max_frames)
        return i, pixels, mask


@dataclass
class Encoded:
    """Frame features of a batch of videos (the decodable ones) and the failures."""

    indices: list[int]
    frames: torch.Tensor        # [n, T, D]
    mask: torch.Tensor          # [n, T]
    failed: dict[int, str]


def frame_features(backbone, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[V, T, 3, S, S] -> [V, T, D] CLIP image embeddings of the real frames (padding stays 0)."""
    v, t = mask.shape
    real = pixels[mask]
    with torch.no_grad():
        feats = backbone.encode_image(real.to(backbone.device)) if len(real) else None
    out = torch.zeros(v, t, backbone.embed_dim, device=backbone.device)
    if feats is not None:
        out[mask.to(out.device)] = feats.float()
    return out


def encode_videos(backbone, paths: Sequence[Path], max_frames: int, slice_framepos: int, *,
                  batch_size: int = 16, workers: int = 0,
                  progress: Callable[[int], None] | None = None) -> Iterator[Encoded]:
    """Decode (in `workers` processes) and encode `paths` in order, batch by batch.

    Workers decode one video each (not a batch each), so with W workers W videos decode at
    once, ahead of the encoder (prefetched), and the encoder groups them into batches:
    decoding overlaps encoding instead of alternating with it."""
    size = backbone.image_size[0]
    ds = ClipFrames(paths, FrameTransform(size, backbone.mean, backbone.std), max_frames, slice_framepos)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False,
                        prefetch_factor=max(2, batch_size // max(workers, 1)) if workers else None,
                        pin_memory=backbone.device.type == "cuda")
    for batch in batched(loader, batch_size):
        ok = [(i, p, m) for i, p, m in batch if p is not None]
        failed = {i: reason for i, p, reason in batch if p is None}
        if ok:
            pixels = torch.stack([p for _, p, _ in ok])
            mask = torch.stack([m for _, _, m in ok])
            feats = frame_features(backbone, pixels, mask).cpu()
        else:
            feats, mask = torch.zeros(0, max_frames, backbone.embed_dim), torch.zeros(0, max_frames, dtype=torch.bool)
        if progress:
            progress(len(batch))
        yield Encoded([i for i, _, _ in ok], feats, mask, failed)


def tokenize_captions(backbone, texts: Sequence[str], max_words: int) -> tuple[torch.Tensor, int]:
    """Tokens padded to the text tower's context, each caption cut to `max_words` tokens
    (start and end included, as the official `max_words`); returns (tokens, how many were cut)."""
    full = backbone.tokenizer(list(texts))
    context = full.shape[1]
    keep = min(max_words, context)
    cut = int(((full != 0).sum(1) > keep).sum())
    tokens = backbone.tokenizer(list(texts), context_length=keep) if keep < context else full
    if tokens.shape[1] < context:
        tokens = torch.cat([tokens, tokens.new_zeros(len(texts), context - tokens.shape[1])], dim=1)
    return tokens, cut


def caption_features(backbone, texts: Sequence[str], max_words: int, batch_size: int = 256,
                     text_tower=None) -> torch.Tensor:
    """[N, D] text EOT embeddings (unnormalised) of captions; `text_tower` overrides the
    backbone's (a head that fine-tuned it). Cut captions are reported once."""
    tokens, cut = tokenize_captions(backbone, texts, max_words)
    if cut:
        LOGGER.warning("%d caption(s) longer than max_words=%d tokens were cut", cut, max_words)
    encode = text_tower or backbone.encode_text
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            out.append(encode(tokens[start:start + batch_size].to(backbone.device)).float())
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)
