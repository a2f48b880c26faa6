"""`FrozenCLIP`: one pretrained CLIP, frozen, with the views every head needs.

Frozen means `requires_grad_(False)` + `eval()`, never `torch.no_grad()`: CLIPasso and
saliency need gradients with respect to the input pixels, which still flow.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import roi_align

from ..errors import UserError
from . import resnet, vit
from .build import build_model
from .spec import BackboneSpec, parse_spec


@dataclass
class Intermediates:
    """Tokens of chosen blocks. `tokens[i]` is NCHW [B,C,h,w] or NLC [B,h*w,C]."""

    layers: list[int]
    tokens: list[torch.Tensor]
    cls: list[torch.Tensor] | None
    grid: tuple[int, int]
    attention: list[torch.Tensor] | None = None
    image_embedding: torch.Tensor | None = None


def _fingerprint(model: nn.Module, spec: str) -> str:
    """A weights-based id: names, shapes and a strided sample of every tensor's values."""
    h = hashlib.sha256(spec.encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class FrozenCLIP(nn.Module):
    """A frozen open_clip CLIP with dense, region and intermediate views."""

    def __init__(self, model: nn.Module, tokenizer, spec: BackboneSpec, source: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.source = source
        self._unlocked: set[str] = set()
        model.requires_grad_(False)
        model.eval()
        self.fingerprint = _fingerprint(model, str(spec))
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", model.visual.image_size)
        self.image_size: tuple[int, int] = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean: tuple[float, ...] = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std: tuple[float, ...] = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        self.preprocess = open_clip.image_transform(
            self.image_size, is_train=False, mean=self.mean, std=self.std,
            resize_mode=pp.get("resize_mode"), interpolation=pp.get("interpolation"))

    # construction -------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: str = "tiny-world", weights: str | Path | None = None, *,
                  device: str | torch.device = "cpu", allow_torchscript: bool = False,
                  cache_dir: str | None = None) -> "FrozenCLIP":
        """`tiny-world`, `ARCH:TAG` (open_clip download), `ARCH:random`, or `ARCH` + weights."""
        parsed = parse_spec(spec, weights)
        built = build_model(parsed, weights, allow_torchscript=allow_torchscript,
                            cache_dir=cache_dir)
        return cls(built.model, built.tokenizer, parsed, built.source).to(device)

    # properties -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_vit(self) -> bool:
        return isinstance(self.model.visual, open_clip.transformer.VisionTransformer)

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def num_layers(self) -> int:
        return len(vit.blocks(self.model.visual)) if self.is_vit else len(resnet.STAGES)

    @property
    def width(self) -> int:
        """Channels of the tokens `forward_intermediates` returns for the last layer."""
        v = self.model.visual
        return v.transformer.width if self.is_vit else v.attnpool.k_proj.in_features

    def layer_widths(self) -> list[int]:
        if self.is_vit:
            return [self.width] * self.num_layers
        v = self.model.visual
        stem = v.conv3.out_channels
        return [stem] + [getattr(v, f"layer{i}")[-1].conv3.out_channels for i in range(1, 5)]

    @property
    def patch_size(self) -> int:
        return self.model.visual.patch_size[0] if self.is_vit else 32

    # freezing -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "FrozenCLIP":
        """Stay in eval mode unless some group was unlocked for fine-tuning."""
        return super().train(mode and bool(self._unlocked))

    def unlock(self, groups: Sequence[str]) -> list[nn.Parameter]:
        """Make parameter groups trainable for paper configs that fine-tune: 'visual',
        'text', 'logit_scale', 'all', or 'visual.last:N' (last N ViT blocks + ln_post/proj)."""
        params: dict[int, nn.Parameter] = {}
        for group in groups:
            for p in self._group_params(group):
                params[id(p)] = p.requires_grad_(True)
            self._unlocked.add(group)
        return list(params.values())

    def _group_params(self, group: str) -> list[nn.Parameter]:
        m = self.model
        if group == "all":
            return list(m.parameters())
        if group == "visual":
            return list(m.visual.parameters())
        if group == "text":
            return [p for n, p in m.named_parameters()
                    if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")]
        if group == "logit_scale":
            return [m.logit_scale]
        if group.startswith("visual.last:") and self.is_vit:
            n = int(group.split(":", 1)[1])
            mods = list(vit.blocks(m.visual)[-n:]) + [m.visual.ln_post]
            extra = [m.visual.proj] if m.visual.proj is not None else []
            return [p for mod in mods for p in mod.parameters()] + extra
        raise UserError(f"unknown unlock group '{group}'; use visual, text, logit_scale, all "
                        "or visual.last:N (ViT only)")

    # encoders -------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self.model.encode_text(tokens.to(self.device), normalize=normalize)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Same arithmetic as open_clip's `encode_image`; other input sizes are allowed
        (position embeddings are resized)."""
        if tuple(pixels.shape[-2:]) == self.image_size:
            return self.model.encode_image(pixels, normalize=normalize)
        feats = self._encode_any_size(pixels)
        return F.normalize(feats, dim=-1) if normalize else feats

    def _encode_any_size(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.model.visual
        if self.is_vit:
            x, _ = vit.embed(v, pixels)
            x = v.transformer(x)
            pooled, _ = v._pool(x)
            return pooled @ v.proj if v.proj is not None else pooled
        resnet.check_size(*pixels.shape[-2:])
        x = pixels.to(v.conv1.weight.dtype)
        for stage in resnet.stages(v):
            x = stage(x)
        return resnet.attention_pool(v.attnpool, x)

    def images_to_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's own preprocessing (resize, crop, normalise) for PIL images."""
        return torch.stack([self.preprocess(im) for im in images]).to(self.device)

    # intermediate views ---------------------------------------------------------------
    def _resolve_layers(self, layers: Sequence[int] | None) -> list[int]:
        n = self.num_layers
        chosen = [n - 1] if layers is None else list(layers)
        out = []
        for i in chosen:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise UserError(f"layer {i} out of range: this backbone has {n} "
                                f"{'blocks' if self.is_vit else 'stages (stem, layer1-4)'}")
            out.append(j)
        return out

    def forward_intermediates(self, pixels: torch.Tensor, layers: Sequence[int] | None = None,
                              fmt: str = "NCHW", attention: bool = False) -> Intermediates:
        """Tokens (and optionally attention maps) of chosen blocks; negative indices count
        from the end. For ViTs `image_embedding` is filled when the last block is taken."""
        if fmt not in ("NCHW", "NLC"):
            raise UserError(f"fmt must be NCHW or NLC, got {fmt!r}")
        idx = self._resolve_layers(layers)
        if self.is_vit:
            return self._vit_intermediates(pixels, idx, fmt, attention)
        if attention:
            raise UserError("attention maps need a ViT image tower; this backbone is a ResNet")
        return self._resnet_intermediates(pixels, idx, fmt)

    def _vit_intermediates(self, pixels, idx, fmt, attention) -> Intermediates:
        v = self.model.visual
        x, grid = vit.embed(v, pixels)
        tokens, cls, attn = [], [], []
        last = max(idx)
        for i, block in enumerate(vit.blocks(v)[: last + 1]):
            if attention and i in idx:
                x, w = vit.block_with_attention(block, x)
                attn.append(w)
            else:
                x = block(x)
            if i in idx:
                patch = x[:, 1:]
                if fmt == "NCHW":
                    patch = patch.transpose(1, 2).reshape(x.shape[0], -1, *grid)
                tokens.append(patch)
                cls.append(x[:, 0])
        emb = None
        if last == self.num_layers - 1:
            pooled, _ = v._pool(x)
            emb = pooled @ v.proj if v.proj is not None else pooled
        order = [sorted(idx).index(i) for i in idx]
        pick = (lambda seq: [seq[o] for o in order])
        return Intermediates(idx, pick(tokens), pick(cls), grid,
                             pick(attn) if attention else None, emb)

    def _resnet_intermediates(self, pixels, idx, fmt) -> Intermediates:
        v = self.model.visual
        resnet.check_size(*pixels.shape[-2:])
        x = pixels.to(v.conv1.weight.dtype)
        found: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(resnet.stages(v)[: max(idx) + 1]):
            x = stage(x)
            if i in idx:
                found[i] = x
        grid = tuple(found[max(idx)].shape[-2:])
        emb = resnet.attention_pool(v.attnpool, x) if max(idx) == 4 else None
        tokens = [found[i] if fmt == "NCHW" else found[i].flatten(2).transpose(1, 2) for i in idx]
        return Intermediates(idx, tokens, None, grid, None, emb)

    def dense_embeddings(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Per-patch embeddings in the joint text space, [B, D, h, w] (MaskCLIP value path)."""
        v = self.model.visual
        if self.is_vit:
            x, grid = vit.embed(v, pixels)
            *body, last = vit.blocks(v)
            for block in body:
                x = block(x)
            x = vit.block_value_path(last, x)
            dense = vit.project(v, x[:, 1:]).transpose(1, 2).reshape(x.shape[0], -1, *grid)
        else:
            resnet.check_size(*pixels.shape[-2:])
            x = pixels.to(v.conv1.weight.dtype)
            for stage in resnet.stages(v):
                x = stage(x)
            dense = resnet.value_path(v.attnpool, x)
        return F.normalize(dense, dim=1) if normalize else dense

    def region_embeddings(self, pixels: torch.Tensor, boxes: Sequence[torch.Tensor],
                          scales: Sequence[float] = (1.0, 1.5), batch_size: int = 64) -> torch.Tensor:
        """ViLD-image targets: per box (x0,y0,x1,y1 in `pixels` coordinates), crops at each
        scale resized to the model input via RoIAlign, encoded, summed, L2-normalised."""
        if len(boxes) != pixels.shape[0]:
            raise UserError(f"got {len(boxes)} box lists for {pixels.shape[0]} images")
        rois = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=pixels.dtype, device=pixels.device),
                                     b.to(pixels)], dim=1) for i, b in enumerate(boxes)])
        if rois.numel() == 0:
            return pixels.new_zeros(0, self.embed_dim)
        total = 0
        for s in scales:
            centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
            half = (rois[:, 3:5] - rois[:, 1:3]) / 2 * s
            scaled = torch.cat([rois[:, :1], centre - half, centre + half], dim=1)
            crops = roi_align(pixels, scaled, output_size=self.image_size, spatial_scale=1.0,
                              sampling_ratio=0, aligned=True)  # adaptive: antialiased when shrinking
            total = total + torch.cat([self.encode_image(c, normalize=True)
                                       for c in crops.split(batch_size)])
        return F.normalize(total, dim=-1)

    def extra_repr(self) -> str:
        return f"spec={self.spec}, source={self.source}, fingerprint={self.fingerprint}"
