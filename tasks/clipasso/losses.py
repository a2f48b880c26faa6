"""CLIPasso's perceptual loss: geometric (intermediate CLIP features, L2) + semantic
(final embeddings, weight x (1 - cos)), on the clean pair and N augmented pairs.

Target features are computed once per image. With ``bank > 0`` a fixed set of `bank`
augmentations is drawn once and the target's features for every one of them are
cached; each iteration each seed draws N of them. That keeps the augmentations varied
across iterations (what stops the sketch from becoming an adversarial pattern for one
view) while the target never goes through CLIP again: no second forward of (1 + N) images
per iteration, about a quarter of an iteration's CLIP compute (the sketch needs
forward and backward). ``bank = 0`` is the official behaviour: fresh
augmentations every iteration, with the target's features recomputed for them (the
clean target's features are still cached).

Losses are per seed ([B]); their sum is what is differentiated, so batching seeds gives
each seed exactly the gradient it would get alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipheads.core.errors import UserError

from .augment import apply_views, sample_views
from .config import LossConfig
from .saliency import normalise
from .target import resize, square_pad

if TYPE_CHECKING:
    from clipheads.core.backbone import FrozenCLIP


def default_layers(backbone: "FrozenCLIP") -> list[int]:
    """Geometric-loss layers: ResNet stages 2, 3 (layer2, layer3, as the paper); for a ViT
    blocks 2, 3 (the official code's indices into its block list), or the middle two
    blocks of a shallow ViT."""
    n = backbone.num_layers
    if not backbone.is_vit or n >= 6:
        return [2, 3]
    return [max(0, n // 2 - 1), max(0, n // 2)]


@dataclass(frozen=True)
class LossTerms:
    """Per-seed losses [B]: `total` (mean over views, optimised), `clean` (the clean pair
    only: the official eval loss), and the two components of `total`."""

    total: torch.Tensor
    clean: torch.Tensor
    geometric: torch.Tensor
    semantic: torch.Tensor


class SketchLoss:
    """The loss of rendered sketches against one target image."""

    def __init__(self, backbone: "FrozenCLIP", target: torch.Tensor, cfg: LossConfig,
                 generator: torch.Generator | None = None):
        self.backbone = backbone
        self.cfg = cfg
        self.layers = list(cfg.geometric_layers) if cfg.geometric_layers is not None else default_layers(backbone)
        n = backbone.num_layers
        for i in self.layers:
            if not -n <= i < n:
                raise UserError(f"loss.geometric_layers: {i} is out of range for {backbone.spec} "
                                f"({n} {'blocks' if backbone.is_vit else 'stages: stem, layer1-4'})")
        weights = cfg.geometric_weights if cfg.geometric_weights is not None else [1.0] * len(self.layers)
        if len(weights) != len(self.layers):
            raise UserError(f"loss.geometric_weights has {len(weights)} entries for "
                            f"{len(self.layers)} geometric_layers")
        if cfg.augmentations < 0 or cfg.bank < 0:
            raise UserError("loss.augmentations and loss.bank must be >= 0")
        self.weights = [float(w) for w in weights]
        self.size = tuple(backbone.image_size)
        device = backbone.device
        with torch.no_grad():
            clean = self.to_clip(target.to(device))
            self.bank = (sample_views(cfg.bank, cfg.perspective, cfg.crop_scale, generator)
                         if cfg.bank > 0 else None)
            views = [clean]
            if self.bank is not None:
                views.append(apply_views(clean.expand(cfg.bank, -1, -1, -1), self.bank, fill=cfg.fill))
            self._target_image = clean
            self.target_feats, self.target_emb = self.features(torch.cat(views))

    def to_clip(self, images: torch.Tensor) -> torch.Tensor:
        """Canvas images [B, 3, H, W] in [0, 1] -> white-padded squares at CLIP's input size."""
        return resize(square_pad(images, 1.0), self.size)

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Geometric-layer features (ViT: CLS + patch tokens) and final embeddings of [N, 3, S, S] in [0, 1]."""
        bb = self.backbone
        n = bb.num_layers
        wanted = [i % n for i in self.layers]
        request = sorted(set(wanted) | {n - 1})
        inter = bb.forward_intermediates(normalise(images, bb.mean, bb.std), request,
                                         fmt="NLC" if bb.is_vit else "NCHW", pooled=True)
        by_layer = dict(zip(inter.layers, inter.tokens))
        if bb.is_vit:
            by_layer = {i: torch.cat([c[:, None], t], dim=1)
                        for i, c, t in zip(inter.layers, inter.cls, inter.tokens)}
        return [by_layer[i].float() for i in wanted], inter.image_embedding.float()

    def __call__(self, sketches: torch.Tensor, augment: bool = True,
                 generator: torch.Generator | list[torch.Generator] | None = None) -> LossTerms:
        """Losses of canvas sketches [B, 3, H, W] (clean pair + `augmentations` pairs when `augment`).

        `generator`: one for the whole batch, or a list with one per sketch (each seed then
        draws its augmentations from its own generator, whatever runs beside it)."""
        cfg = self.cfg
        x = self.to_clip(sketches)
        b = x.shape[0]
        n_aug = cfg.augmentations if augment else 0
        tidx = torch.zeros(b, 1, dtype=torch.long)
        target_feats, target_emb = self.target_feats, self.target_emb
        per_item = isinstance(generator, (list, tuple))
        if per_item and len(generator) != b:
            raise ValueError(f"{len(generator)} generators for {b} sketches")
        if n_aug:
            if self.bank is not None:
                if per_item:
                    pick = torch.stack([torch.randint(self.bank.shape[0], (n_aug,), generator=g) for g in generator])
                else:
                    pick = torch.randint(self.bank.shape[0], (b, n_aug), generator=generator)
                views = self.bank[pick.reshape(-1)]
                tidx = torch.cat([tidx, 1 + pick], dim=1)
            else:
                if per_item:
                    views = torch.cat([sample_views(n_aug, cfg.perspective, cfg.crop_scale, g) for g in generator])
                else:
                    views = sample_views(b * n_aug, cfg.perspective, cfg.crop_scale, generator)
                with torch.no_grad():
                    fresh = apply_views(self._target_image.expand(b * n_aug, -1, -1, -1), views, fill=cfg.fill)
                    f_feats, f_emb = self.features(fresh)
                target_feats = [torch.cat([t[:1], f]) for t, f in zip(target_feats, f_feats)]
                target_emb = torch.cat([target_emb[:1], f_emb])
                tidx = torch.cat([tidx, 1 + torch.arange(b * n_aug).view(b, n_aug)], dim=1)
            aug = apply_views(x.repeat_interleave(n_aug, dim=0), views, fill=cfg.fill)
            x = torch.cat([x[:, None], aug.view(b, n_aug, *x.shape[1:])], dim=1).flatten(0, 1)
        views_per_seed = 1 + n_aug
        feats, emb = self.features(x)
        flat = tidx.reshape(-1).to(emb.device)
        geometric = emb.new_zeros(b, views_per_seed)
        for w, f, t in zip(self.weights, feats, target_feats):
            geometric = geometric + w * (f - t[flat]).pow(2).flatten(1).mean(1).view(b, views_per_seed)
        cos = F.cosine_similarity(emb, target_emb[flat], dim=-1).view(b, views_per_seed)
        semantic = cfg.semantic_weight * (1.0 - cos)
        per_view = geometric + semantic
        return LossTerms(per_view.mean(1), per_view[:, 0].detach(), geometric.mean(1).detach(),
                         semantic.mean(1).detach())
