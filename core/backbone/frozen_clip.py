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
    image_embedding: torch.Tensor | None = None  # only with forward_intermediates(pooled=True)


def _tensor_digest(t: torch.Tensor) -> bytes:
    """sha256 of a tensor's raw bytes (any dtype, bf16 included), without float copies."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    raw = flat.view(torch.uint8).numpy() if flat.numel() else b""
    return hashlib.sha256(raw).digest()


def _stamp(t: torch.Tensor) -> tuple:
    """Changes whenever PyTorch knows the tensor changed: in-place writes (optimizer steps,
    `load_state_dict`, writes under `no_grad`) bump `_version`; `.to()`/`.half()` move data.
    Inference tensors keep no version counter (like writes through `.data`)."""
    version = None if t.is_inference() else t._version
    return (id(t), version, t.data_ptr(), t.dtype, t.device, tuple(t.shape))


def _is_text(name: str) -> bool:
    """The tensors `encode_text` reads: everything but the image tower and the logit scale."""
    return not name.startswith("visual.") and name not in ("logit_scale", "logit_bias")


class WeightsFingerprint:
    """16-hex ids of every byte of a model's weights, kept current at the cost of a stamp check.

    Each state-dict tensor is hashed in full once and re-hashed only when its stamp changes,
    so fine-tuning a few blocks re-hashes only those (ViT-B/16, 571 MB: 0.35 s in full on
    one CPU core, about 1 ms per access when nothing changed). Writes through `tensor.data`
    or inside `torch.inference_mode` bypass PyTorch's version counter: call `refresh()`.
    """

    def __init__(self, model: nn.Module, spec: str):
        self.model = model
        self.spec = spec
        self._digests: dict[str, tuple[tuple, bytes]] = {}

    def refresh(self) -> None:
        """Forget every cached digest (after writes the version counters cannot see)."""
        self._digests.clear()

    def _entries(self, keep) -> list[tuple[str, torch.Tensor, bytes]]:
        out = []
        for name, t in sorted(self.model.state_dict(keep_vars=True).items()):
            if not keep(name):
                continue
            stamp = _stamp(t)
            cached = self._digests.get(name)
            if cached is None or cached[0] != stamp:
                cached = (stamp, _tensor_digest(t))
                self._digests[name] = cached
            out.append((name, t, cached[1]))
        return out

    def of(self, part: str = "all") -> str:
        """Hash of the spec and every (name, shape, dtype, bytes) of `part` ('all' or 'text')."""
        keep = _is_text if part == "text" else (lambda name: True)
        h = hashlib.sha256(f"{part}\0{self.spec}\0".encode())
        for name, t, digest in self._entries(keep):
            h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
            h.update(digest)
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
        self._weights_id = WeightsFingerprint(model, str(spec))
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
                  cache_dir: str | None = None,
                  allow_activation_mismatch: bool = False) -> "FrozenCLIP":
        """`tiny-world`, `ARCH:TAG` (open_clip download), `ARCH:random`, or `ARCH` + weights.

        `allow_activation_mismatch` turns a QuickGELU/GELU mismatch between the weights and
        the architecture into a logged warning (see `weights.load_into`)."""
        parsed = parse_spec(spec, weights)
        built = build_model(parsed, weights, allow_torchscript=allow_torchscript,
                            cache_dir=cache_dir,
                            allow_activation_mismatch=allow_activation_mismatch)
        return cls(built.model, built.tokenizer, parsed, built.source).to(device)

    # identity -------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Id of the current weights: spec + every byte of every state-dict tensor. Cached
        per tensor and re-hashed when a tensor changes (unlocked fine-tuning)."""
        return self._weights_id.of("all")

    @property
    def text_fingerprint(self) -> str:
        """Like `fingerprint`, over the text tower only: what text embeddings depend on, so
        fine-tuning the image tower keeps the text cache."""
        return self._weights_id.of("text")

    @property
    def text_trainable(self) -> bool:
        """Whether some text-tower weight is unlocked (text embeddings change as it trains)."""
        return any(p.requires_grad for n, p in self.model.named_parameters() if _is_text(n))

    def refresh_fingerprint(self) -> str:
        """Re-hash everything; needed only after writes through `tensor.data`, which PyTorch's
        version counters (and so the cached digests) cannot see."""
        self._weights_id.refresh()
        return self.fingerprint

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
        """Make parameter groups trainable for paper configs that fine-tune; returns them.

        Groups: 'all', 'visual' (the whole image tower), 'text' (text tower, no logit scale),
        'logit_scale', 'visual.last:N' (the last N ViT blocks only) and 'visual.pool' (what
        pools tokens into the image embedding: ViT ln_post + proj, ResNet attnpool).
        'visual.last:N' leaves the pooling frozen on purpose: token heads never use it, and
        under DDP an unlocked parameter without a gradient stops training. Heads that train
        through `image_embedding` (`forward_intermediates(pooled=True)`) add 'visual.pool'."""
        params: dict[int, nn.Parameter] = {}
        for group in groups:
            for p in self._group_params(group):
                params[id(p)] = p.requires_grad_(True)
            self._unlocked.add(group)
        return list(params.values())

    def _pool_params(self) -> list[nn.Parameter]:
        """What `v._pool` + projection (ViT) or the attention pool (ResNet) read."""
        v = self.model.visual
        if not self.is_vit:
            return list(v.attnpool.parameters())
        mods = [getattr(v, n, None) for n in ("attn_pool", "attn_pool_contrastive", "ln_post")]
        extra = [v.proj] if v.proj is not None else []
        return [p for mod in mods if mod is not None for p in mod.parameters()] + extra

    def _group_params(self, group: str) -> list[nn.Parameter]:
        m = self.model
        if group == "all":
            return list(m.parameters())
        if group == "visual":
            return list(m.visual.parameters())
        if group == "text":
            return [p for n, p in m.named_parameters() if _is_text(n)]
        if group == "logit_scale":
            return [m.logit_scale]
        if group == "visual.pool":
            return self._pool_params()
        if group.startswith("visual.last:") and self.is_vit:
            return self._last_blocks(group)
        raise UserError(f"unknown unlock group '{group}'; use visual, text, logit_scale, all, "
                        "visual.pool or visual.last:N (ViT only)")

    def _last_blocks(self, group: str) -> list[nn.Parameter]:
        n_text = group.split(":", 1)[1]
        total = self.num_layers
        if not n_text.isdigit() or not 1 <= int(n_text) <= total:
            raise UserError(f"unlock group '{group}': N must be a whole number from 1 to {total} "
                            f"(this backbone has {total} blocks), e.g. visual.last:2")
        return [p for block in vit.blocks(self.model.visual)[-int(n_text):] for p in block.parameters()]

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
                              fmt: str = "NCHW", attention: bool = False,
                              pooled: bool = False) -> Intermediates:
        """Tokens (and optionally attention maps) of chosen blocks; negative indices count
        from the end. The tower runs only up to the deepest chosen block.

        `pooled=True` also fills `image_embedding` (encode_image's value): it needs the whole
        tower, so it runs to the last block whatever `layers` says. Off by default so that the
        pooling (ln_post/proj, attnpool) stays out of the graph of heads that use tokens only."""
        if fmt not in ("NCHW", "NLC"):
            raise UserError(f"fmt must be NCHW or NLC, got {fmt!r}")
        idx = self._resolve_layers(layers)
        if self.is_vit:
            return self._vit_intermediates(pixels, idx, fmt, attention, pooled)
        if attention:
            raise UserError("attention maps need a ViT image tower; this backbone is a ResNet")
        return self._resnet_intermediates(pixels, idx, fmt, pooled)

    def _vit_intermediates(self, pixels, idx, fmt, attention, pooled) -> Intermediates:
        v = self.model.visual
        x, grid = vit.embed(v, pixels)
        tokens, cls, attn = [], [], []
        stop = self.num_layers - 1 if pooled else max(idx)
        for i, block in enumerate(vit.blocks(v)[: stop + 1]):
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
        if pooled:
            emb, _ = v._pool(x)
            emb = emb @ v.proj if v.proj is not None else emb
        order = [sorted(idx).index(i) for i in idx]
        pick = (lambda seq: [seq[o] for o in order])
        return Intermediates(idx, pick(tokens), pick(cls), grid,
                             pick(attn) if attention else None, emb)

    def _resnet_intermediates(self, pixels, idx, fmt, pooled) -> Intermediates:
        v = self.model.visual
        resnet.check_size(*pixels.shape[-2:])
        x = pixels.to(v.conv1.weight.dtype)
        found: dict[int, torch.Tensor] = {}
        stop = len(resnet.STAGES) - 1 if pooled else max(idx)
        for i, stage in enumerate(resnet.stages(v)[: stop + 1]):
            x = stage(x)
            if i in idx:
                found[i] = x
        grid = tuple(found[max(idx)].shape[-2:])
        emb = resnet.attention_pool(v.attnpool, x) if pooled else None
        tokens = [found[i] if fmt == "NCHW" else found[i].flatten(2).transpose(1, 2) for i in idx]
        return Intermediates(idx, tokens, None, grid, None, emb)

    def dense_embeddings(self, pixels: torch.Tensor, normalize: bool = True, *,
                         pool_positions: bool = False) -> torch.Tensor:
        """Per-patch embeddings in the joint text space, [B, D, h, w], as MaskCLIP computes them.

        ViT: the last block's attention is replaced by each token's own value path (residual
        and MLP kept), then ln_post and the projection. ResNet: c_proj(v_proj(x)) at every
        position of the last stage, without the attention pool's positional embedding.
        `pool_positions=True` (ResNets only) adds the pool's resized positional embedding
        before v_proj: a variant, not MaskCLIP."""
        v = self.model.visual
        if pool_positions and self.is_vit:
            raise UserError("pool_positions applies to ResNet backbones only (the attention "
                            "pool's positional embedding); a ViT adds positions at its input")
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
            dense = resnet.value_path(v.attnpool, x, positional=pool_positions)
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
