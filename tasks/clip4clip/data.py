"""Training items over precomputed features: the backbone is frozen, so a video's frame
features and a caption's text feature never change and are computed once."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class CaptionPairs(Dataset):
    """Item i: (frames [T, D], mask [T], text [D]) of caption i and its video."""

    def __init__(self, frames: torch.Tensor, mask: torch.Tensor, text: torch.Tensor, owner: torch.Tensor):
        if len(text) != len(owner):
            raise ValueError(f"{len(text)} captions but {len(owner)} owners")
        self.frames, self.mask, self.text, self.owner = frames, mask, text, owner

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = int(self.owner[i])
        return self.frames[v], self.mask[v], self.text[i]
