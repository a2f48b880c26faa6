"""Inference on images of any size: single-scale, or the paper's multi-scale + flip +
sliding-window protocol; memory stays bounded whatever the input size.

Images are resized with PIL from their 8-bit pixels (never as a full-size float
tensor), windows are batched, label scores are accumulated at the working resolution
(the long side at `size`, or at `base_size` for multi-scale) and brought to the input
size in bands of rows that fit `max_elements`, taking the argmax band by band.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipheads.core.errors import UserError

from .config import InferConfig


def fit_long_side(height: int, width: int, long: int) -> tuple[int, int]:
    """(h, w) with the long side at `long` and the aspect ratio kept (each side >= 1)."""
    if height > width:
        return long, max(1, int(width * long / height + 0.5))
    return max(1, int(height * long / width + 0.5)), long


def round_up(n: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 25) -> np.ndarray:
    """argmax over labels of `scores` [K, h, w] bilinearly resized (align_corners) to `size`,
    computed in bands of output rows so at most ~`max_elements` floats exist at once."""
    k, h, w = scores.shape
    H, W = size
    dtype = np.uint8 if k <= 256 else np.int32
    if (h, w) == (H, W):
        return scores.argmax(0).cpu().numpy().astype(dtype)
    out = np.empty((H, W), dtype=dtype)
    rows = max(1, min(H, max_elements // max(1, k * W)))
    dev = scores.device
    gx = torch.linspace(-1.0, 1.0, W, device=dev) if W > 1 else torch.full((1,), -1.0, device=dev)
    gy_all = torch.linspace(-1.0, 1.0, H, device=dev) if H > 1 else torch.full((1,), -1.0, device=dev)
    src = scores[None].float()
    for r0 in range(0, H, rows):
        gy = gy_all[r0:r0 + rows]
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # [1, r, W, 2]
        band = F.grid_sample(src, grid, mode="bilinear", align_corners=True)
        out[r0:r0 + len(gy)] = band[0].argmax(0).cpu().numpy().astype(dtype)
    return out


@dataclass
class Window:
    h0: int
    w0: int
    h1: int
    w1: int


def windows(height: int, width: int, crop: int, stride: int) -> list[Window]:
    """Sliding windows over a (padded) height x width canvas, as the official evaluator."""
    hg = int(math.ceil(max(0, height - crop) / stride)) + 1
    wg = int(math.ceil(max(0, width - crop) / stride)) + 1
    out = []
    for i in range(hg):
        for j in range(wg):
            h0, w0 = i * stride, j * stride
            out.append(Window(h0, w0, min(h0 + crop, height), min(w0 + crop, width)))
    return out


class Segmenter:
    """Label scores and masks for one model and one label set.

    `net(pixels, text)` must return logits at the input size; `text` holds the label
    embeddings [K, D], encoded once by the caller (the text bank); `cfg` has its sizes
    resolved (`InferConfig.resolved`)."""

    def __init__(self, net, text: torch.Tensor, cfg: InferConfig,
                 device: torch.device | str | None = None):
        size = cfg.size
        if size is None or (cfg.multi_scale and None in (cfg.base_size, cfg.crop_size, cfg.stride)):
            raise UserError("inference sizes are unset: resolve the InferConfig against the head first")
        if cfg.multi_scale:
            if not cfg.scales or min(cfg.scales) <= 0:
                raise UserError(f"infer.scales must be positive numbers, got {cfg.scales}")
            if cfg.crop_size < 1 or cfg.stride < 1 or cfg.base_size < 1:
                raise UserError("infer.base_size, infer.crop_size and infer.stride must be >= 1")
        if size < 1:
            raise UserError(f"infer.size must be >= 1, got {size}")
        self.net = net
        self.cfg = cfg
        self.size = size
        self.device = torch.device(device) if device is not None else text.device
        self.text = text.to(self.device)
        enc = net.encoder
        self.patch = enc.patch_size
        self.mean = torch.tensor(enc.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(enc.std, device=self.device).view(1, 3, 1, 1)

    @property
    def num_labels(self) -> int:
        return int(self.text.shape[0])

    # pixels ------------------------------------------------------------------------
    def _pixels(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """[1, 3, h, w] in [0, 1], resized from the 8-bit image (never a full-size float)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if (image.height, image.width) != (height, width):
            image = image.resize((width, height), Image.BILINEAR)
        arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        return arr.to(self.device).permute(2, 0, 1)[None].float().div_(255.0)

    @staticmethod
    def _pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Pad bottom/right with black (pixel 0), as the official evaluator does."""
        ph, pw = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
        return F.pad(x, (0, pw, 0, ph), value=0.0) if ph or pw else x

    def _logits(self, batch01: torch.Tensor) -> torch.Tensor:
        return self.net((batch01 - self.mean) / self.std, self.text).float()

    def _run(self, crops: list[torch.Tensor], flip: bool) -> list[torch.Tensor]:
        """Logits [K, h, w] per equally sized crop, batched; flip adds the mirrored pass."""
        outs: list[torch.Tensor] = []
        step = max(1, self.cfg.batch_size)
        for i in range(0, len(crops), step):
            batch = torch.cat(crops[i:i + step])
            logits = self._logits(batch)
            if flip:
                logits = logits + self._logits(batch.flip(-1)).flip(-1)
            outs.extend(logits.unbind(0))
        return outs

    # scores ------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, image: Image.Image) -> torch.Tensor:
        """[K, h, w] label scores at the working resolution (aspect ratio of the image)."""
        return self._multi_scale(image) if self.cfg.multi_scale else self._single_scale(image)

    def _single_scale(self, image: Image.Image) -> torch.Tensor:
        oh, ow = fit_long_side(image.height, image.width, self.size)
        x = self._pad(self._pixels(image, oh, ow), round_up(oh, self.patch), round_up(ow, self.patch))
        return self._run([x], flip=False)[0][:, :oh, :ow]

    def _multi_scale(self, image: Image.Image) -> torch.Tensor:
        cfg = self.cfg
        h, w = image.height, image.width
        crop, stride = cfg.crop_size, cfg.stride
        canon = fit_long_side(h, w, cfg.base_size)
        total = torch.zeros(self.num_labels, *canon, device=self.device)
        for scale in cfg.scales:
            long = int(math.ceil(cfg.base_size * scale))
            oh, ow = fit_long_side(h, w, long)
            x = self._pixels(image, oh, ow)
            if long <= crop:
                out = self._run([self._pad(x, crop, crop)], cfg.flip)[0][:, :oh, :ow]
            else:
                x = self._pad(x, max(oh, crop), max(ow, crop))
                ph, pw = x.shape[-2:]
                wins = windows(ph, pw, crop, stride)
                crops = [self._pad(x[..., b.h0:b.h1, b.w0:b.w1], crop, crop) for b in wins]
                acc = torch.zeros(self.num_labels, ph, pw, device=self.device)
                count = torch.zeros(1, ph, pw, device=self.device)
                for b, logits in zip(wins, self._run(crops, cfg.flip)):
                    acc[:, b.h0:b.h1, b.w0:b.w1] += logits[:, :b.h1 - b.h0, :b.w1 - b.w0]
                    count[:, b.h0:b.h1, b.w0:b.w1] += 1
                out = (acc / count)[:, :oh, :ow]
            if (oh, ow) != canon:
                out = F.interpolate(out[None], size=canon, mode="bilinear", align_corners=True)[0]
            total += out
        return total

    # masks -------------------------------------------------------------------------
    def predict(self, image: Image.Image) -> np.ndarray:
        """[H, W] label indices at the image's own size (uint8, or int32 for > 256 labels)."""
        return upsample_argmax(self.scores(image), (image.height, image.width), self.cfg.max_elements)


def fractions(mask: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Pixel fraction of each label (every label listed, zeros included)."""
    counts = np.bincount(mask.reshape(-1), minlength=len(labels))[: len(labels)]
    total = max(1, mask.size)
    return {label: round(float(c) / total, 6) for label, c in zip(labels, counts)}
