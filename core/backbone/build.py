"""Turning a spec (+ optional weights file) into an open_clip model with checked weights."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
from torch import nn

from ..errors import UserError
from .spec import RANDOM_TAG, BackboneSpec, tiny_world_dir
from .weights import load_into, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    model: nn.Module
    tokenizer: Callable
    source: str


class _NoRandomInitNotice(logging.Filter):
    """open_clip announces random init on the root logger even when we load weights right
    after; that line would mislead users, so it is dropped while we build."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    notice = _NoRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _arch_quick_gelu(arch: str) -> bool:
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def _folder(folder: Path, name: str, missing_hint: str) -> BuiltModel:
    """An open_clip `local-dir` folder: open_clip_config.json + open_clip_model.safetensors."""
    weights = folder / "open_clip_model.safetensors"
    if not (folder / "open_clip_config.json").is_file() or not weights.is_file():
        raise UserError(f"{name}: weights missing from {folder}; {missing_hint}")
    spec = f"local-dir:{folder}"
    model = open_clip.create_model(spec, load_weights=False)
    ckpt = read_checkpoint(weights)
    load_into(model, ckpt, name, quick_gelu=bool(ckpt.quick_gelu))
    return BuiltModel(model, open_clip.get_tokenizer(spec), str(weights))


def _pretrained(spec: BackboneSpec, cache_dir: str | None, allow_mismatch: bool) -> BuiltModel:
    """open_clip download; a GELU tag into a QuickGELU arch is refused (QuickGELU tags into a
    GELU arch are fixed silently, as open_clip's own `force_quick_gelu` does)."""
    arch, tag = spec.arch, spec.tag
    tag_qg = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    if _arch_quick_gelu(arch) and not tag_qg:
        what = f"pretrained tag '{tag}' was trained with GELU but '{arch}' uses QuickGELU"
        if not allow_mismatch:
            raise UserError(f"{what}; use --backbone {arch.removesuffix('-quickgelu')}:{tag} "
                            "(or pass --allow-activation-mismatch if you really mean it)")
        log.warning("%s; loading it anyway (activation mismatch allowed)", what)
    try:
        model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=tag_qg,
                                       cache_dir=cache_dir)
    except Exception as exc:
        raise UserError(f"could not fetch weights for {spec} ({type(exc).__name__}); when offline, "
                        f"download them elsewhere and pass --backbone {arch} --weights FILE") from exc
    return BuiltModel(model, open_clip.get_tokenizer(arch), f"open_clip pretrained '{tag}'")


def _random(spec: BackboneSpec) -> BuiltModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(spec.arch)
    return BuiltModel(model, open_clip.get_tokenizer(spec.arch), "random init (seed 0)")


def _from_file(spec: BackboneSpec, weights: Path, allow_torchscript: bool,
               allow_mismatch: bool) -> BuiltModel:
    """ARCH + --weights FILE; the file's activation (recorded, or OpenAI's) must match ARCH."""
    ckpt = read_checkpoint(weights, allow_torchscript=allow_torchscript)
    model = open_clip.create_model(spec.arch)
    load_into(model, ckpt, spec.arch, quick_gelu=_arch_quick_gelu(spec.arch),
              allow_activation_mismatch=allow_mismatch)
    return BuiltModel(model, open_clip.get_tokenizer(spec.arch), str(weights))


def build_model(spec: BackboneSpec, weights: str | Path | None = None, *,
                allow_torchscript: bool = False, cache_dir: str | None = None,
                allow_activation_mismatch: bool = False) -> BuiltModel:
    """The open_clip model of `spec`; `allow_activation_mismatch` turns QuickGELU/GELU
    mismatches into a logged warning instead of a UserError."""
    with _quiet_random_init():
        return _build(spec, weights, allow_torchscript, cache_dir, allow_activation_mismatch)


def _build(spec: BackboneSpec, weights, allow_torchscript: bool, cache_dir: str | None,
           allow_mismatch: bool) -> BuiltModel:
    if spec.is_tiny_world:
        return _folder(tiny_world_dir(), "tiny-world",
                       "rebuild them with 'clipheads clip train --config tiny_world --install' "
                       "(docs/tiny_world.md) or pass --backbone ARCH:TAG")
    if spec.local_dir is not None:
        return _folder(spec.local_dir, str(spec), "export a trained CLIP there first")
    if spec.tag == RANDOM_TAG:
        return _random(spec)
    if spec.tag is not None:
        return _pretrained(spec, cache_dir, allow_mismatch)
    if weights is None:
        raise UserError(f"backbone '{spec}' needs --weights FILE")
    return _from_file(spec, Path(weights), allow_torchscript, allow_mismatch)
