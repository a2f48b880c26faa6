"""Official GroupViT key names <-> transformers' `GroupViTModel` (both directions).

Facts of the mapping (from transformers' convert_groupvit_nvlab_to_hf and both module
trees): fused `qkv` / `in_proj_*` split in q, k, v order (chunk along dim 0); the
projectors' Conv1d kernels [out, in, 1] are Linear weights [out, in]; the official
`linear_out` is index 3 of transformers' projection Sequential; `multi_label_logit_scale`
exists only in the official layout (absent in transformers: when converting back it is
re-created at its initial value log(1/0.07) unless a value is given).
Structures transformers cannot express (a dim-changing `reduction`, per-stage head
counts) never occur in the released models.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from clipheads.core.errors import UserError

_V = r"img_encoder\.layers\.(\d+)"
_HV = r"vision_model.encoder.stages.\1"
_DOWN = ("norm_tokens|norm_post_tokens|norm_x|norm_new_x|mlp_inter\\.fc[12]|mlp_channels\\.fc[12]|"
         "assign\\.[qkv]_proj|assign\\.proj|pre_assign_attn\\.norm2|pre_assign_attn\\.norm_post|"
         "pre_assign_attn\\.mlp\\.fc[12]|pre_assign_attn\\.attn\\.[qkv]_proj")
_TEXT = r"text_encoder\.transformer\.resblocks\.(\d+)"
_HT = r"text_model.encoder.layers.\1"
_PARAM = r"(weight|bias)"

# official -> transformers, one-to-one renames (first full match wins)
TO_HF: tuple[tuple[str, str], ...] = (
    (r"img_encoder\.pos_embed", "vision_model.embeddings.position_embeddings"),
    (rf"img_encoder\.patch_embed\.proj\.{_PARAM}", r"vision_model.embeddings.patch_embeddings.projection.\1"),
    (rf"img_encoder\.patch_embed\.norm\.{_PARAM}", r"vision_model.embeddings.layernorm.\1"),
    (rf"{_V}\.group_token", rf"{_HV}.group_token"),
    (rf"{_V}\.blocks\.(\d+)\.norm1\.{_PARAM}", rf"{_HV}.layers.\2.layer_norm1.\3"),
    (rf"{_V}\.blocks\.(\d+)\.norm2\.{_PARAM}", rf"{_HV}.layers.\2.layer_norm2.\3"),
    (rf"{_V}\.blocks\.(\d+)\.attn\.proj\.{_PARAM}", rf"{_HV}.layers.\2.self_attn.out_proj.\3"),
    (rf"{_V}\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.{_PARAM}", rf"{_HV}.layers.\2.mlp.\3.\4"),
    (rf"{_V}\.downsample\.pre_assign_attn\.attn\.proj\.{_PARAM}", rf"{_HV}.downsample.pre_assign_attn.attn.out_proj.\2"),
    (rf"{_V}\.downsample\.({_DOWN})\.{_PARAM}", rf"{_HV}.downsample.\2.\3"),
    (rf"{_V}\.group_projector\.(0|1\.fc1|1\.fc2)\.{_PARAM}", rf"{_HV}.group_projector.\2.\3"),
    (rf"img_encoder\.norm\.{_PARAM}", r"vision_model.layernorm.\1"),
    (r"text_encoder\.token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    (r"text_encoder\.positional_embedding", "text_model.embeddings.position_embedding.weight"),
    (rf"{_TEXT}\.attn\.out_proj\.{_PARAM}", rf"{_HT}.self_attn.out_proj.\2"),
    (rf"{_TEXT}\.ln_1\.{_PARAM}", rf"{_HT}.layer_norm1.\2"),
    (rf"{_TEXT}\.ln_2\.{_PARAM}", rf"{_HT}.layer_norm2.\2"),
    (rf"{_TEXT}\.mlp\.c_fc\.{_PARAM}", rf"{_HT}.mlp.fc1.\2"),
    (rf"{_TEXT}\.mlp\.c_proj\.{_PARAM}", rf"{_HT}.mlp.fc2.\2"),
    (rf"text_encoder\.ln_final\.{_PARAM}", r"text_model.final_layer_norm.\1"),
    (r"(img|text)_projector\.linear_hidden\.0\.(weight|bias)", r"\1_P.0.\2"),
    (r"(img|text)_projector\.linear_hidden\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)",
     r"\1_P.1.\2"),
    (r"(img|text)_projector\.linear_out\.(weight|bias)", r"\1_P.3.\2"),
    (r"logit_scale", "logit_scale"),
)
PROJECTION = {"img_P": "visual_projection", "text_P": "text_projection"}
FUSED_TO_HF = ((re.compile(rf"{_V}\.blocks\.(\d+)\.attn\.qkv\.{_PARAM}"),
                r"vision_model.encoder.stages.\1.layers.\2.self_attn.{}_proj.\3"),
               (re.compile(rf"{_TEXT}\.attn\.in_proj_{_PARAM}"), r"text_model.encoder.layers.\1.self_attn.{}_proj.\2"))
FUSED_FROM_HF = ((re.compile(r"vision_model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)"),
                  "img_encoder.layers.{0}.blocks.{1}.attn.qkv.{3}"),
                 (re.compile(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)"),
                  "text_encoder.transformer.resblocks.{0}.attn.in_proj_{2}"))


def _rename_to_hf(key: str) -> str | None:
    for pattern, target in TO_HF:
        if re.fullmatch(pattern, key):
            name = re.sub(rf"^{pattern}$", target, key)
            head = name.split(".", 1)[0]
            return f"{PROJECTION[head]}.{name.split('.', 1)[1]}" if head in PROJECTION else name
    return None


def official_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official-name state dict as transformers' GroupViTModel names it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "multi_label_logit_scale":
            continue
        fused = next(((p, t) for p, t in FUSED_TO_HF if p.fullmatch(key)), None)
        if fused is not None:
            pattern, template = fused
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[pattern.sub(template.format(part), key)] = chunk.clone()
            continue
        name = _rename_to_hf(key)
        if name is None:
            raise UserError(f"official GroupViT key {key!r} has no transformers equivalent (a "
                            "dim-changing stage or a classification head?)")
        if name.startswith(("visual_projection", "text_projection")) and name.endswith("weight") \
                and value.ndim == 3:
            value = value.squeeze(-1)
        out[name] = value
    return out


def hf_to_official(state: Mapping[str, torch.Tensor], multi_label_logit_scale: float | None = None,
                   ) -> dict[str, torch.Tensor]:
    """transformers' GroupViTModel names -> official names; `multi_label_logit_scale`
    (a float) adds that key, which transformers does not keep."""
    back = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        hit = None
        for pattern, template in FUSED_FROM_HF:
            m = pattern.fullmatch(key)
            if m:
                hit = (template.format(*m.groups()), m.groups()[-2])
                break
        if hit is not None:
            fused.setdefault(hit[0], {})[hit[1]] = value
            continue
        name = _official_name(key)
        if name is None:
            raise UserError(f"transformers GroupViT key {key!r} has no official equivalent")
        if name.endswith("weight") and (".linear_hidden.0." in name or ".linear_out." in name) and value.ndim == 2:
            value = value.unsqueeze(-1)
        back[name] = value
    for name, parts in fused.items():
        if set(parts) != set("qkv"):
            raise UserError(f"transformers GroupViT state lacks q/k/v parts for {name}")
        back[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if multi_label_logit_scale is not None:
        back["multi_label_logit_scale"] = torch.tensor(float(multi_label_logit_scale))
    return back


_BACK = (
    (r"vision_model\.embeddings\.position_embeddings", "img_encoder.pos_embed"),
    (r"vision_model\.embeddings\.patch_embeddings\.projection\.(.+)", r"img_encoder.patch_embed.proj.\1"),
    (r"vision_model\.embeddings\.layernorm\.(.+)", r"img_encoder.patch_embed.norm.\1"),
    (r"vision_model\.encoder\.stages\.(\d+)\.group_token", r"img_encoder.layers.\1.group_token"),
    (r"vision_model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_norm([12])\.(.+)",
     r"img_encoder.layers.\1.blocks.\2.norm\3.\4"),
    (r"vision_model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.self_attn\.out_proj\.(.+)",
     r"img_encoder.layers.\1.blocks.\2.attn.proj.\3"),
    (r"vision_model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.mlp\.(.+)", r"img_encoder.layers.\1.blocks.\2.mlp.\3"),
    (r"vision_model\.encoder\.stages\.(\d+)\.downsample\.pre_assign_attn\.attn\.out_proj\.(.+)",
     r"img_encoder.layers.\1.downsample.pre_assign_attn.attn.proj.\2"),
    (r"vision_model\.encoder\.stages\.(\d+)\.downsample\.(.+)", r"img_encoder.layers.\1.downsample.\2"),
    (r"vision_model\.encoder\.stages\.(\d+)\.group_projector\.(.+)", r"img_encoder.layers.\1.group_projector.\2"),
    (r"vision_model\.layernorm\.(.+)", r"img_encoder.norm.\1"),
    (r"text_model\.embeddings\.token_embedding\.weight", "text_encoder.token_embedding.weight"),
    (r"text_model\.embeddings\.position_embedding\.weight", "text_encoder.positional_embedding"),
    (r"text_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)",
     r"text_encoder.transformer.resblocks.\1.attn.out_proj.\2"),
    (r"text_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.(.+)", r"text_encoder.transformer.resblocks.\1.ln_\2.\3"),
    (r"text_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(.+)", r"text_encoder.transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"text_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(.+)", r"text_encoder.transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"text_model\.final_layer_norm\.(.+)", r"text_encoder.ln_final.\1"),
    (r"visual_projection\.([01])\.(.+)", r"img_projector.linear_hidden.\1.\2"),
    (r"visual_projection\.3\.(.+)", r"img_projector.linear_out.\1"),
    (r"text_projection\.([01])\.(.+)", r"text_projector.linear_hidden.\1.\2"),
    (r"text_projection\.3\.(.+)", r"text_projector.linear_out.\1"),
    (r"logit_scale", "logit_scale"),
)


def _official_name(key: str) -> str | None:
    """The official name of a one-to-one transformers key (checked by renaming it back)."""
    for pattern, target in _BACK:
        if re.fullmatch(pattern, key):
            name = re.sub(rf"^{pattern}$", target, key)
            return name if _rename_to_hf(name) == key else None
    return None


def is_hf_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in state)


def default_multi_label_scale() -> float:
    return math.log(1 / 0.07)
