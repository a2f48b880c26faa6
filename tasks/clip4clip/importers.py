"""Official checkpoints into clipheads head folders.

- ArrowLuo/CLIP4Clip `pytorch_model.bin.N`: `clip.*` (OpenAI layout, some tensors fp16),
  plus `frame_position_embeddings` / `transformerClip.resblocks.*` (seqTransf),
  `lstm_visual.*` (seqLSTM) or `cross.*` + `similarity_dense.*` (tightTransf); meanP adds
  nothing. The head kind follows from the keys.
- MMAction2's CLIP4Clip (meanP): `clip.*` only (its adapter has no weights). MMAction2
  averages frames without normalising them first; the imported head is the official
  meanP (normalise, masked mean, renormalise), so scores differ slightly from MMAction2's.

The fine-tuned CLIP goes next to the head (`clip.safetensors`): a head folder carries the
backbone it was trained with, and `load_head` builds it unless the user picks another.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipheads.core.atomic import atomic_path
from clipheads.core.backbone.weights import guess_openai_arch
from clipheads.core.checkpoint_pickle import load_checkpoint_object
from clipheads.core.errors import UserError

from .model import Clip4Clip, HeadSpec

CLIP_FILE = "clip.safetensors"
# official name -> ours (regex, replacement), tried in order
_RULES = [
    (r"^frame_position_embeddings\.weight$", "temporal.transformer.position_embeddings.weight"),
    (r"^transformerClip\.resblocks\.(\d+)\.(.+)$", r"temporal.transformer.blocks.\1.\2"),
    (r"^lstm_visual\.(.+)$", r"temporal.lstm.\1"),
    (r"^cross\.embeddings\.position_embeddings\.weight$", "cross.transformer.position_embeddings.weight"),
    (r"^cross\.transformer\.resblocks\.(\d+)\.(.+)$", r"cross.transformer.blocks.\1.\2"),
    (r"^cross\.pooler\.ln_pool\.(.+)$", r"cross.ln_pool.\1"),
    (r"^cross\.pooler\.dense\.(.+)$", r"cross.pool.\1"),
    (r"^similarity_dense\.(.+)$", r"cross.similarity_dense.\1"),
]


@dataclass
class Imported:
    """A head's state dict and spec, the CLIP state dict, and what was dropped (and why)."""

    spec: HeadSpec
    head_state: dict[str, torch.Tensor]
    clip_state: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official CLIP4Clip / MMAction2 checkpoint (read as data only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    obj = load_checkpoint_object(path).obj
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("clip.") for k in state):
        raise UserError(f"{path} is not a CLIP4Clip checkpoint: no 'clip.*' keys in its state dict")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def sim_header_of(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("cross.") for k in state):
        return "tightTransf"
    if any(k.startswith("transformerClip.") for k in state):
        return "seqTransf"
    if any(k.startswith("lstm_visual.") for k in state):
        return "seqLSTM"
    return "meanP"


def convert(state: dict[str, torch.Tensor]) -> Imported:
    """Split and rename an official state dict; every key is used or listed as dropped."""
    clip = {k[5:]: v.float() for k, v in state.items() if k.startswith("clip.")}
    kind = sim_header_of(state)
    head: dict[str, torch.Tensor] = {"logit_scale": clip["logit_scale"].float().reshape(())}
    dropped: dict[str, str] = {}
    for key, value in state.items():
        if key.startswith("clip."):
            continue
        if kind == "seqLSTM" and key == "frame_position_embeddings.weight":
            dropped[key] = "created but never read by the official seqLSTM"
            continue
        for pattern, repl in _RULES:
            if re.match(pattern, key):
                head[re.sub(pattern, repl, key)] = value.float()
                break
        else:
            dropped[key] = "not part of any CLIP4Clip head"
    unknown = [k for k, why in dropped.items() if why.startswith("not part")]
    if unknown:
        raise UserError(f"unexpected keys in the checkpoint: {', '.join(unknown[:5])}; is it a CLIP4Clip checkpoint?")
    width = clip["text_projection"].shape[1]
    layers = len({k.split(".")[3] for k in head if k.startswith(("temporal.transformer.blocks.",
                                                                 "cross.transformer.blocks."))}) or 4
    spec = HeadSpec(kind, width, layers, max(1, clip["positional_embedding"].shape[1] // 64),
                    clip["positional_embedding"].shape[0])
    return Imported(spec, head, clip, dropped)


def export(imported: Imported, out: Path, source: str, clip_arch: str | None = None) -> dict:
    """Write the head folder (clip4clip_head.* + clip.safetensors) after proving both parts
    load: the CLIP through the core backbone loader, the head strictly into our module."""
    from safetensors.torch import save_file

    from clipheads.core.backbone import FrozenCLIP
    from clipheads.core.state_dict import load_state_dict_strict

    from .weights import HeadInfo, save_head
    arch = clip_arch or guess_openai_arch(imported.clip_state)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / CLIP_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in imported.clip_state.items()}, str(tmp),
                  metadata={"quick_gelu": "true"})
    backbone = FrozenCLIP.from_spec(arch, out / CLIP_FILE)
    if backbone.embed_dim != imported.spec.dim:
        raise UserError(f"the head works in {imported.spec.dim}-d but CLIP {arch} embeds in "
                        f"{backbone.embed_dim}-d; pass the right --clip-arch")
    load_state_dict_strict(Clip4Clip(imported.spec), imported.head_state, source, "the imported CLIP4Clip head")
    info = HeadInfo(imported.spec, arch, backbone.fingerprint, backbone_weights=CLIP_FILE,
                    notes=f"imported from {Path(source).name} by tools/convert_clip4clip.py")
    save_head(out, imported.head_state, info)
    return {"out": str(out), "sim_header": imported.spec.sim_header, "clip_arch": arch,
            "head_tensors": len(imported.head_state), "clip_tensors": len(imported.clip_state),
            "dropped": imported.dropped}
