"""Loaders for the files the official ViLD release ships next to its checkpoints:

- `clip_synonym_prompt.npy`: the text classifier, [512, 1203] (embedding x class; CLIP
  ViT-B/32 text embeddings of the LVIS class names and synonyms over the 63 prompts);
- `lvis_rare_masks.npy`: [1204], index 0 the background, 1 for classes trained on and 0
  for the rare (novel) ones (the training code multiplies logits by it).

Read with `allow_pickle=False`: a `.npy` that needs pickle is refused, never executed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clipheads.core.errors import UserError


def _read_npy(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}; expected a plain numeric .npy file") from exc
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise UserError(f"{what} {path} holds {array.dtype} values; expected numbers")
    return array


def load_text_classifier(path: str | Path, embed_dim: int | None = None) -> torch.Tensor:
    """The released classifier as [C, E] class embeddings (the file stores [E, C])."""
    array = _read_npy(path, "ViLD text classifier")
    if array.ndim != 2:
        raise UserError(f"ViLD text classifier {path} has shape {array.shape}; expected [embedding, classes] "
                        "such as (512, 1203)")
    if embed_dim is not None and array.shape[0] != embed_dim:
        raise UserError(f"ViLD text classifier {path} has {array.shape[0]}-d embeddings, the detector "
                        f"{embed_dim}-d; use the backbone the file was made with (ViT-B/32: 512)")
    if not np.isfinite(array).all():
        raise UserError(f"ViLD text classifier {path} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array.T)).float()


def load_rare_mask(path: str | Path, num_classes: int | None = None) -> torch.Tensor:
    """The released rare mask as a [C] bool tensor, True for the novel (rare) classes."""
    array = _read_npy(path, "ViLD rare mask")
    if array.ndim != 1 or array.shape[0] < 2:
        raise UserError(f"ViLD rare mask {path} has shape {array.shape}; expected [1 + classes] such as (1204,)")
    if num_classes is not None and array.shape[0] != num_classes + 1:
        raise UserError(f"ViLD rare mask {path} covers {array.shape[0] - 1} classes, the classifier "
                        f"{num_classes}; the mask has one entry per class plus the background first")
    if not np.isin(array, (0, 1)).all():
        raise UserError(f"ViLD rare mask {path} holds values other than 0 and 1")
    return torch.from_numpy(array[1:] == 0)
