"""Writing a trained CLIP as an open_clip `local-dir` folder: open_clip_config.json +
open_clip_model.safetensors (fp16, activation recorded) + SHA256SUMS.

Token-embedding rows of tokens the training captions never use carry only their random
initialisation; they are zeroed so the file compresses (git, wheels) and says so.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import save_file
from torch import nn

from clipheads.core.atomic import atomic_path, atomic_write_text

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
SUMS = "SHA256SUMS"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def used_token_ids(tokenizer, captions: Iterable[str]) -> torch.Tensor:
    ids = torch.unique(tokenizer(list(captions)).flatten())
    return ids


def export_open_clip(model: nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
                     out: Path, keep_tokens: torch.Tensor | None = None) -> Path:
    """Write the folder; each file is written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    key = "token_embedding.weight"
    if keep_tokens is not None and key in state:
        keep = torch.zeros(state[key].shape[0], dtype=torch.bool)
        keep[keep_tokens] = True
        state[key][~keep] = 0
    size = model_cfg["vision_cfg"]["image_size"]
    pp = {"size": [size, size] if isinstance(size, int) else list(size), **preprocess_cfg}
    meta = {"quick_gelu": str(bool(model_cfg.get("quick_gelu", False))).lower(),
            "model_cfg": json.dumps(model_cfg)}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata=meta)
    atomic_write_text(out / CONFIG, json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}, indent=2) + "\n")
    atomic_write_text(out / SUMS, f"{sha256(out / WEIGHTS)}  {WEIGHTS}\n{sha256(out / CONFIG)}  {CONFIG}\n")
    return out
