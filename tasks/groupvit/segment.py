"""Zero-shot segmentation from groups, following the official GroupViT evaluation
(NVlabs `GroupViTSegInference.encode_decode` + mmseg's resize and slide inference):

1. resize so the short side is `short_side` (keeping the aspect; mmseg's `Resize` with
   img_scale (2048, short_side)), bilinear on the 0..255 image, then normalise;
2. for each `crop` window (stride `stride`; or the whole image): chain the *soft*
   assignments of all grouping stages, resize them to the window (bilinear), argmax
   to one group per pixel;
3. label the groups: softmax of group-text similarity (x the model's logit scale) over
   the classes, restricted to the image's `top_k` classes (by the image embedding),
   multiplied by the unrestricted softmax, as the official code does;
4. a pixel is background when its label's score is below `bg_thresh` (capped at the
   best group's score, so something is always foreground); windows are averaged, the
   average resized to the input, and argmaxed.

The class list may contain a background entry (matched by threshold, never by text),
which is where the mask's background index comes from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from clipheads.core.precision import full_precision
from clipheads.core.segmentation.argmax import channel_argmax

from .blocks import chain_assignments
from .config import SegmentConfig
from .official import Grouped


@dataclass
class GroupReport:
    """One whole-image pass: `groups` [H, W] group index per pixel (input size), each
    group's pixel share, and its scores over the foreground labels."""

    groups: np.ndarray
    shares: list[float]
    scores: np.ndarray        # [G, num_labels] (restricted softmax x softmax; 0 for the background entry)


def resized_shape(height: int, width: int, short_side: int, long_cap: int = 2048) -> tuple[int, int]:
    """mmcv `imrescale` to fit (long_cap, short_side) keeping the aspect ratio."""
    if not short_side:
        return height, width
    scale = min(long_cap / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_pixels(image: Image.Image, size: tuple[int, int], mean, std, device) -> torch.Tensor:
    """RGB image -> [1, 3, h, w] resized (bilinear, no antialias, rounded to 0..255 like
    cv2 on uint8) and normalised with the model's mean/std."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = x.to(device) / 255.0
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def group_maps(grouped: Grouped, size: tuple[int, int]) -> torch.Tensor:
    """Chained soft assignments resized to `size`: [B, G, h, w]."""
    chained = chain_assignments([a.soft for a in grouped.assignments])     # [B, N, G]
    maps = rearrange(chained, "b (h w) g -> b g h w", h=grouped.grid[0], w=grouped.grid[1])
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def group_affinity(image_emb: torch.Tensor, group_emb: torch.Tensor, text: torch.Tensor,
                   scale: torch.Tensor, top_k: int) -> torch.Tensor:
    """[G, N] label scores of each group: softmax over the image's top-k classes times the
    softmax over all classes (official `encode_decode`). Always fp32: with a logit scale
    near 100, a bf16 cosine would move the background threshold and the top-k."""
    with full_precision(text.device):
        return _group_affinity(image_emb.float(), group_emb.float(), text.float(), scale.float(), top_k)


def _group_affinity(image_emb: torch.Tensor, group_emb: torch.Tensor, text: torch.Tensor,
                    scale: torch.Tensor, top_k: int) -> torch.Tensor:
    image_emb, group_emb = F.normalize(image_emb, dim=-1), F.normalize(group_emb, dim=-1)
    logits = (group_emb @ text.T) * scale
    full = logits.softmax(dim=-1)
    image_probs = ((image_emb @ text.T) * scale).softmax(dim=-1)
    top = image_probs.topk(min(top_k, text.shape[0]), dim=-1).indices
    allowed = torch.zeros_like(image_probs, dtype=torch.bool).scatter_(-1, top, True)
    restricted = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return restricted * full


class GroupSegmenter:
    """Segment images into `labels` (one may be `background_index`, decided by threshold)."""

    def __init__(self, model, text: torch.Tensor, labels: list[str], cfg: SegmentConfig,
                 background_index: int | None = None, keep: int | None = None, device: str | torch.device = "cpu"):
        self.model, self.cfg, self.keep, self.device = model, cfg, keep, torch.device(device)
        self.labels = list(labels)
        self.background_index = background_index
        self.fg_index = [i for i in range(len(labels)) if i != background_index]
        self.text = F.normalize(text.float().to(self.device), dim=-1)
        if self.text.shape[0] != len(self.fg_index):
            raise ValueError(f"{self.text.shape[0]} text embeddings for {len(self.fg_index)} foreground labels")

    @torch.no_grad()
    def window_scores(self, pixels: torch.Tensor) -> torch.Tensor:
        """[C, h, w] scores of one window; channel 0 is background when there is one."""
        grouped = self.model.group(pixels, self.keep)
        h, w = pixels.shape[-2:]
        maps = group_maps(grouped, (h, w))[0]                                 # [G, h, w]
        onehot = F.one_hot(channel_argmax(maps), maps.shape[0]).to(maps.dtype)  # [h, w, G]
        image_emb, group_emb = self.model.embed_groups(grouped)
        aff = group_affinity(image_emb[0], group_emb[0], self.text, self.model.scales()[0], self.cfg.top_k)
        fg = rearrange(onehot @ aff, "h w c -> c h w")
        if self.background_index is None:
            return fg
        thresh = min(self.cfg.bg_thresh, float(aff.max()))
        bg = (fg.max(dim=0).values < thresh).to(fg.dtype)[None]
        return torch.cat([bg, fg], dim=0)

    @torch.no_grad()
    def scores(self, image: Image.Image) -> torch.Tensor:
        """[C, H, W] at the input size (mmseg slide inference over the resized image)."""
        size = resized_shape(image.height, image.width, self.cfg.short_side)
        pixels = to_pixels(image, size, self.model.mean, self.model.std, self.device)
        crop, stride = self.cfg.crop, self.cfg.stride
        H, W = size
        if not crop or (H <= crop and W <= crop):
            total = self.window_scores(pixels)
        else:
            total, count = None, torch.zeros(1, H, W, device=self.device)
            rows = max(H - crop + stride - 1, 0) // stride + 1
            cols = max(W - crop + stride - 1, 0) // stride + 1
            for r in range(rows):
                for c in range(cols):
                    y2, x2 = min(r * stride + crop, H), min(c * stride + crop, W)
                    y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                    part = self.window_scores(pixels[..., y1:y2, x1:x2])
                    if total is None:
                        total = torch.zeros(part.shape[0], H, W, device=self.device)
                    total[:, y1:y2, x1:x2] += part
                    count[:, y1:y2, x1:x2] += 1
            total = total / count
        if (H, W) != (image.height, image.width):
            total = F.interpolate(total[None], size=(image.height, image.width), mode="bilinear",
                                  align_corners=False)[0]
        return total

    def predict(self, image: Image.Image) -> np.ndarray:
        """[H, W] label indices into `labels`."""
        channels = ([self.background_index] if self.background_index is not None else []) + self.fg_index
        best = channel_argmax(self.scores(image)).cpu().numpy()
        lookup = np.asarray(channels, dtype=np.int64)
        return lookup[best].astype(np.uint8 if len(self.labels) <= 256 else np.int32)

    @torch.no_grad()
    def groups(self, image: Image.Image) -> GroupReport:
        """The learned groups of one whole-image pass (before any label is assigned)."""
        size = resized_shape(image.height, image.width, self.cfg.short_side)
        pixels = to_pixels(image, size, self.model.mean, self.model.std, self.device)
        grouped = self.model.group(pixels, self.keep)
        maps = group_maps(grouped, (image.height, image.width))[0]
        index = channel_argmax(maps)
        shares = torch.bincount(index.flatten(), minlength=maps.shape[0]).float() / index.numel()
        image_emb, group_emb = self.model.embed_groups(grouped)
        aff = group_affinity(image_emb[0], group_emb[0], self.text, self.model.scales()[0], self.cfg.top_k)
        scores = torch.zeros(aff.shape[0], len(self.labels), device=aff.device)
        scores[:, self.fg_index] = aff
        return GroupReport(index.cpu().numpy().astype(np.int32), shares.tolist(), scores.cpu().numpy())
