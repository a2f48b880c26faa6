"""Where to put the first strokes: CLIP ViT attention relevancy x XDoG edges.

The official code's `interpret` averages each block's attention over heads, takes the
CLS row (CLS -> patches) and averages it over blocks (its rollout matrix is computed
but unused); the map is bicubically upsampled to the canvas and min-max normalised.
`relevancy="rollout"` uses that rollout instead. The attention maps come from the
core's `forward_intermediates(..., attention=True)`, so any open_clip ViT works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F

from clipheads.core.errors import UserError, close_matches

from .edges import XDOG_VARIANTS, edge_saliency, xdog_edges, xdog_official
from .target import Target, resize, square_offset, square_pad

if TYPE_CHECKING:
    from clipheads.core.backbone import FrozenCLIP

RELEVANCY: tuple[str, ...] = ("attention", "rollout")
Relevancy = Literal["attention", "rollout"]


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """CLIP's per-channel normalisation of [B, 3, H, W] images in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def vit_relevancy(backbone: "FrozenCLIP", pixels: torch.Tensor, relevancy: Relevancy = "attention") -> torch.Tensor:
    """[B, gh, gw] CLS -> patch relevancy of a ViT backbone for normalised `pixels`."""
    if relevancy not in RELEVANCY:
        raise UserError(f"unknown relevancy {relevancy!r}{close_matches(relevancy, RELEVANCY)}; "
                        f"use one of {', '.join(RELEVANCY)}")
    if not backbone.is_vit:
        raise UserError(f"saliency needs a ViT backbone (attention maps); {backbone.spec} is a "
                        "ResNet: set init.saliency_backbone (e.g. ViT-B-32:openai) or init.method=random")
    inter = backbone.forward_intermediates(pixels, list(range(backbone.num_layers)), fmt="NLC",
                                           attention=True)
    cams = torch.stack(inter.attention).float().clamp_min(0).mean(dim=2)  # [blocks, B, T, T]
    if relevancy == "attention":
        rel = cams[:, :, 0, 1:].mean(dim=0)
    else:
        tokens = cams.shape[-1]
        r = torch.eye(tokens, dtype=cams.dtype, device=cams.device).expand(cams.shape[1], -1, -1)
        for cam in cams:
            r = r + cam @ r
        rel = r[:, 0, 1:]
    return rel.reshape(rel.shape[0], *inter.grid)


def min_max(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rescale to [0, 1]; a flat map becomes all ones (every place equally salient), never NaN."""
    x = torch.nan_to_num(x, nan=0.0)
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= eps:
        return torch.ones_like(x)
    return (x - lo) / (hi - lo)


def attention_map(backbone: "FrozenCLIP", target: Target, relevancy: Relevancy = "attention") -> torch.Tensor:
    """[H, W] relevancy on the target's canvas, in [0, 1]."""
    square = square_pad(target.pixels.to(backbone.device))
    side = square.shape[-1]
    pixels = normalise(resize(square, backbone.image_size), backbone.mean, backbone.std)
    with torch.no_grad():
        rel = vit_relevancy(backbone, pixels, relevancy)
    up = F.interpolate(rel[:, None], size=(side, side), mode="bicubic", align_corners=False)[0, 0]
    top, left = square_offset(target.height, target.width)
    return min_max(up[top:top + target.height, left:left + target.width].cpu())


@dataclass(frozen=True)
class SaliencyMaps:
    """attention [H, W] in [0, 1]; edges [H, W] (XDoG, 1 = flat, 0 = edge) or None;
    placement [H, W]: what stroke starts are sampled from."""

    attention: torch.Tensor
    edges: torch.Tensor | None
    placement: torch.Tensor


def edge_map(target: Target, mean: tuple[float, ...], std: tuple[float, ...], variant: str = "official",
             xdog: dict[str, float] | None = None) -> np.ndarray:
    """[H, W] binary XDoG map (float32) of the target's canvas.

    ``official``: of the canvas normalised with the saliency CLIP's `mean` / `std`, as the
    official code does; ``winnemoeller``: of the [0, 1] canvas."""
    if variant not in XDOG_VARIANTS:
        raise UserError(f"unknown init.xdog_variant {variant!r}{close_matches(variant, XDOG_VARIANTS)}; "
                        f"use one of {', '.join(XDOG_VARIANTS)}")
    pixels = target.pixels.detach().float().cpu()
    if variant == "official":
        return xdog_official(normalise(pixels, mean, std)[0].permute(1, 2, 0).numpy(), **(xdog or {}))
    return xdog_edges(pixels[0].permute(1, 2, 0).numpy().astype(np.float64), **(xdog or {}))


def saliency_maps(backbone: "FrozenCLIP", target: Target, relevancy: Relevancy = "attention", use_edges: bool = True,
                  xdog: dict[str, float] | None = None, xdog_variant: str = "official") -> SaliencyMaps:
    """The paper's placement map ``(1 - xdog) * attention`` on the canvas."""
    attn = attention_map(backbone, target, relevancy)
    if not use_edges:
        return SaliencyMaps(attn, None, attn)
    edges = edge_map(target, backbone.mean, backbone.std, xdog_variant, xdog)
    return SaliencyMaps(attn, torch.from_numpy(edges), edge_saliency(attn, edges))
