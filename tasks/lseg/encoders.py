"""Image encoders for the LSeg decoder, behind one interface: `forward(pixels)` ->
(list of NCHW token maps of the tapped blocks, list of class tokens), plus `widths`,
`patch_size`, `mean` and `std`.

`ClipEncoder` adapts the core FrozenCLIP (the default: frozen, or partly unlocked).
`TimmViTEncoder` adapts a timm ViT, the paper's trainable `vit_large_patch16_384`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipheads.core.errors import UserError, first_line

Features = tuple[list[torch.Tensor], list[torch.Tensor] | None]


class ClipEncoder(nn.Module):
    """Tapped blocks of the core FrozenCLIP ViT.

    The backbone is deliberately *not* a registered submodule: frozen, it is never in the
    head's state dict, optimizer, DDP wrapper or checkpoints. With unlocked (image tower)
    groups, only the image tower becomes a submodule (`visual`), so its fine-tuned
    weights travel with the head while the text tower stays the backbone's."""

    def __init__(self, backbone, layers: Sequence[int], unlock: Sequence[str] = ()):
        super().__init__()
        if not backbone.is_vit:
            raise UserError(f"LSeg needs a ViT image tower; backbone {backbone.spec} is a ResNet "
                            "(pick a ViT, e.g. --backbone ViT-B-16:openai)")
        n = backbone.num_layers
        self.layers = [int(i) + n if int(i) < 0 else int(i) for i in layers]
        if any(not 0 <= i < n for i in self.layers):
            raise UserError(f"model.layers {list(layers)} out of range: backbone {backbone.spec} "
                            f"has {n} blocks (e.g. --set model.layers=[{n//4-1},{n//2-1},{3*n//4-1},{n-1}])")
        self.unlocked = list(unlock)
        self.__dict__["backbone"] = backbone
        if self.unlocked:
            backbone.unlock(self.unlocked)
            self.visual = backbone.model.visual
            self._check_all_unlocked_used()

    def _check_all_unlocked_used(self) -> None:
        """Unlocked weights the taps never reach (blocks after the deepest tap, the pooling)
        would get no gradient: DDP stops on them, and they would silently never train."""
        from clipheads.core.backbone import vit
        used = {id(p) for i, block in enumerate(vit.blocks(self.visual)) if i <= max(self.layers)
                for p in block.parameters()}
        in_blocks = {id(p) for p in vit.blocks(self.visual).parameters()}
        pool = {id(p) for name, m in self.visual.named_children()
                if name in ("ln_post", "attn_pool") for p in m.parameters()}
        if getattr(self.visual, "proj", None) is not None:
            pool.add(id(self.visual.proj))
        idle = [n for n, p in self.visual.named_parameters()
                if p.requires_grad and ((id(p) in in_blocks and id(p) not in used) or id(p) in pool)]
        if idle:
            raise UserError(f"model.unlock {self.unlocked} makes {len(idle)} parameter(s) trainable that "
                            f"LSeg never uses (e.g. {idle[0]}: after the deepest tapped block "
                            f"{max(self.layers)} or in the pooling); unlock 'visual.last:N' within the taps")

    @property
    def widths(self) -> list[int]:
        return [self.backbone.layer_widths()[i] for i in self.layers]

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.backbone.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.backbone.std

    def forward(self, pixels: torch.Tensor) -> Features:
        out = self.backbone.forward_intermediates(pixels, self.layers, fmt="NCHW")
        return out.tokens, out.cls


def _import_timm():
    try:
        import timm
    except ImportError as exc:
        raise UserError("the timm image encoder needs timm: pip install 'clipheads[lseg]'") from exc
    return timm


def read_timm_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A timm ViT state dict from .safetensors or a torch file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"timm weights file not found: {path} (model.timm.weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
    except Exception as exc:
        raise UserError(f"cannot read timm weights {path} ({type(exc).__name__}); pass a state "
                        "dict saved with torch.save or safetensors") from exc
    return {k.removeprefix("module."): v for k, v in state.items()}


class TimmViTEncoder(nn.Module):
    """Tapped blocks of a timm VisionTransformer at any input size.

    The forward re-runs the tower from its own modules so that inputs of any size work:
    patch projection, class token, position embeddings resized bilinearly to the grid
    (as the official LSeg does), then the blocks up to the deepest tap."""

    def __init__(self, name: str, layers: Sequence[int], weights: str | None = None,
                 kwargs: dict | None = None, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), trainable: bool = True):
        super().__init__()
        timm = _import_timm()
        try:
            self.vit = timm.create_model(name, pretrained=False, num_classes=0, **(kwargs or {}))
        except Exception as exc:
            raise UserError(f"cannot build timm model '{name}' ({type(exc).__name__}: "
                            f"{first_line(exc, 120)}); check model.timm.name/kwargs") from exc
        for attr in ("cls_token", "pos_embed", "blocks", "patch_embed"):
            if getattr(self.vit, attr, None) is None:
                raise UserError(f"timm model '{name}' is not a plain ViT with a class token "
                                f"(no {attr}); use a vit_* model")
        if getattr(self.vit, "reg_token", None) is not None:
            raise UserError(f"timm model '{name}' has register tokens; use a plain vit_* model")
        depth = len(self.vit.blocks)
        self.layers = [i + depth if i < 0 else i for i in layers]
        if any(not 0 <= i < depth for i in self.layers):
            raise UserError(f"model.layers {list(layers)} out of range for {name} ({depth} blocks)")
        if weights:
            self.load_vit_weights(read_timm_weights(weights), str(weights))
        self.trainable = trainable
        self.vit.requires_grad_(trainable)
        self.mean, self.std = tuple(mean), tuple(std)

    def train(self, mode: bool = True) -> "TimmViTEncoder":
        """A frozen ViT stays in eval mode (dropout/drop-path off) while the head trains."""
        return super().train(mode and self.trainable)

    def load_vit_weights(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Strict load; the classifier head (unused here) is dropped."""
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        own = self.vit.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        bad = [k for k in own if k in state and state[k].shape != own[k].shape and k != "pos_embed"]
        if missing or unexpected or bad:
            raise UserError(f"timm weights {where} do not fit {type(self.vit).__name__}: "
                            f"missing {missing[:3]}, unexpected {unexpected[:3]}, shape {bad[:3]}")
        if state["pos_embed"].shape != own["pos_embed"].shape:
            state = dict(state, pos_embed=self._resize_table(state["pos_embed"], self._table_grid(own["pos_embed"])))
        self.vit.load_state_dict(state, strict=True)

    @property
    def widths(self) -> list[int]:
        return [int(self.vit.embed_dim)] * len(self.layers)

    @property
    def patch_size(self) -> int:
        p = self.vit.patch_embed.patch_size
        return int(p[0] if isinstance(p, (tuple, list)) else p)

    @staticmethod
    def _table_grid(pos: torch.Tensor) -> tuple[int, int]:
        n = pos.shape[1] - 1
        g = int(math.isqrt(n))
        return g, n // g

    @staticmethod
    def _resize_table(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Class position kept, patch positions resized bilinearly to `grid`."""
        cls_pos, patch = pos[:, :1], pos[0, 1:]
        g = int(math.isqrt(patch.shape[0]))
        if (g, patch.shape[0] // g) == tuple(grid):
            return pos
        patch = patch.reshape(1, g, patch.shape[0] // g, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=grid, mode="bilinear", align_corners=False)
        return torch.cat([cls_pos, patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)

    def forward(self, pixels: torch.Tensor) -> Features:
        v = self.vit
        p = self.patch_size
        if pixels.shape[-2] < p or pixels.shape[-1] < p:
            raise UserError(f"image of {pixels.shape[-2]}x{pixels.shape[-1]} pixels is smaller than "
                            f"the {p}x{p} patch; resize it up first")
        x = v.patch_embed.proj(pixels)
        grid = (x.shape[-2], x.shape[-1])
        x = v.patch_embed.norm(x.flatten(2).transpose(1, 2))
        x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = v.pos_drop(x + self._resize_table(v.pos_embed, grid))
        x = v.norm_pre(x)
        tokens, cls = [], []
        last = max(self.layers)
        for i, block in enumerate(v.blocks[: last + 1]):
            x = block(x)
            if i in self.layers:
                tokens.append(x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid))
                cls.append(x[:, 0])
        order = [sorted(self.layers).index(i) for i in self.layers]
        return [tokens[o] for o in order], [cls[o] for o in order]
