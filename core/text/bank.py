"""The text bank: template-averaged label embeddings, encoded once per text-tower weights.

Keyed by (the backbone's text fingerprint *at each call*, template set, label), so weights
fine-tuned (or edited) after the bank was made never get embeddings of their old values;
fine-tuning only the image tower keeps the cache. Memory first, then disk
(`$CLIPHEADS_CACHE`, default `~/.cache/clipheads`, one folder per fingerprint). An
unwritable cache directory falls back to memory with one warning; it never fails a run.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import atomic_save
from ..precision import full_precision
from .labels import check_labels
from .templates import render, resolve_templates

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$CLIPHEADS_CACHE, or ~/.cache/clipheads when it is unset or empty (an empty value
    must not mean 'the working directory')."""
    return Path(os.environ.get("CLIPHEADS_CACHE") or Path.home() / ".cache" / "clipheads")


def _weights_key(backbone) -> str:
    """The text tower's current fingerprint (the whole model's for backbones without one)."""
    key = getattr(backbone, "text_fingerprint", None)
    return key if key is not None else backbone.fingerprint


def _text_in_training(backbone) -> bool:
    """Whether the text weights are unlocked: then every step is new weights, not worth disk."""
    return bool(getattr(backbone, "text_trainable", False))


class TextBank:
    """Label embeddings for one backbone; `encoded_prompts` counts real encoder calls."""

    def __init__(self, backbone, cache_dir: str | Path | None = None, batch_size: int = 256,
                 use_disk: bool = True):
        self.backbone = backbone
        self.batch_size = batch_size
        self.encoded_prompts = 0
        self._memory: dict[tuple[str, str, str], torch.Tensor] = {}
        self._loaded_dirs: set[Path] = set()
        self._weights: str | None = None
        self._disk: Path | None = None
        if use_disk:
            root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            self._disk = self._writable(root / "textbank")

    @staticmethod
    def _writable(folder: Path) -> Path | None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
            return folder
        except OSError as exc:
            log.warning("text cache %s is not writable (%s); caching in memory only",
                        folder, exc.strerror or exc)
            return None

    @staticmethod
    def _set_key(templates: Sequence[str]) -> str:
        return hashlib.sha1("\n".join(templates).encode()).hexdigest()[:12]

    def embed(self, labels: Sequence[str], templates: str | Sequence[str] = "single") -> torch.Tensor:
        """[len(labels), D] unit-norm embeddings, each the re-normalised mean over templates."""
        labels = check_labels(labels)
        tmpl = resolve_templates(templates, where="templates")
        key = (self._current_weights(), self._set_key(tmpl))
        self._load_disk(key)
        missing = [lb for lb in labels if (*key, lb) not in self._memory]
        if missing:
            new = self._encode(missing, tmpl)
            for lb, e in zip(missing, new):
                self._memory[(*key, lb)] = e
            self._save_disk(key, missing, new)
        return torch.stack([self._memory[(*key, lb)] for lb in labels]).to(self.backbone.device)

    def _current_weights(self) -> str:
        """The weights key now; when it moved, embeddings of the old weights leave memory."""
        key = _weights_key(self.backbone)
        if key != self._weights:
            self._memory = {k: v for k, v in self._memory.items() if k[0] == key}
            self._loaded_dirs = {d for d in self._loaded_dirs if d.parent.name == key}
            self._weights = key
        return key

    def _encode(self, labels: list[str], templates: tuple[str, ...]) -> torch.Tensor:
        prompts = [p for lb in labels for p in render(templates, lb)]
        chunks = []
        with torch.no_grad(), full_precision(self.backbone.device):  # cached: always fp32
            for i in range(0, len(prompts), self.batch_size):
                chunk = prompts[i:i + self.batch_size]
                chunks.append(self.backbone.encode_text(chunk, normalize=True).float().cpu())
                self.encoded_prompts += len(chunk)
        per_prompt = torch.cat(chunks).reshape(len(labels), len(templates), -1)
        return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)

    def _shard_dir(self, key: tuple[str, str]) -> Path | None:
        return None if self._disk is None else self._disk / key[0] / key[1]

    def _load_disk(self, key: tuple[str, str]) -> None:
        folder = self._shard_dir(key)
        if folder is None or folder in self._loaded_dirs or not folder.is_dir():
            return
        for shard in sorted(folder.glob("*.pt")):
            try:
                data = torch.load(shard, map_location="cpu", weights_only=True)
                for lb, e in zip(data["labels"], data["embeddings"]):
                    self._memory.setdefault((*key, lb), e)
            except Exception as exc:  # a damaged shard is re-encoded, never fatal
                log.warning("ignoring damaged text cache shard %s (%s)", shard, type(exc).__name__)
        self._loaded_dirs.add(folder)

    def _save_disk(self, key: tuple[str, str], labels: list[str], emb: torch.Tensor) -> None:
        folder = self._shard_dir(key)
        if folder is None or _text_in_training(self.backbone):
            return
        name = hashlib.sha1("\n".join(labels).encode()).hexdigest()[:16] + ".pt"
        try:
            atomic_save({"labels": labels, "embeddings": emb}, folder / name)
        except OSError as exc:
            log.warning("could not write text cache in %s (%s); keeping it in memory",
                        folder, exc.strerror or exc)
            self._disk = None
