"""Inference on images of any size: single-scale, or the paper's multi-scale + flip +
sliding-window protocol; memory stays bounded whatever the input size.

Single-scale: the image is resized with PIL from its 8-bit pixels, one forward pass, label
scores at the working resolution (long side `size`), brought to the input size in bands
of rows that fit `max_elements`, taking the argmax band by band.

Multi-scale follows lang-seg's evaluator (`additional_utils/encoding_models.py`,
`MultiEvalModule.forward`, PyTorch-Encoding's algorithm) step for step: per scale the
image is resized with bilinear `align_corners=True` interpolation (no antialiasing) so
its long side is ceil(base_size x scale), run whole (padded to crop_size) or in
crop_size sliding windows, flip logits added, window overlaps averaged; each scale's
scores are resized (bilinear, align_corners) to the ORIGINAL image size and summed there.
The resizes are computed band by band from gathered rows (`bilinear_rows`), so neither
the full-size float image nor, when the per-scale maps are smaller, the full-size score
sum is ever materialised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipheads.core.errors import UserError
from clipheads.core.segmentation.argmax import channel_argmax

from .config import InferConfig


def fit_long_side(height: int, width: int, long: int) -> tuple[int, int]:
    """(h, w) with the long side at `long` and the aspect ratio kept (each side >= 1)."""
    if height > width:
        return long, max(1, int(width * long / height + 0.5))
    return max(1, int(height * long / width + 0.5)), long


def round_up(n: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


def _axis(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of bilinear align_corners=True resizing along one axis
    (PyTorch's formula: src = dst * (n_in - 1) / (n_out - 1), 0 when n_out == 1)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = torch.arange(n_out, dtype=torch.float32, device=device) * scale
    i0 = src.long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, src - i0.float()


def bilinear_rows(rows, size_in: tuple[int, int], size: tuple[int, int], r0: int, r1: int,
                  device) -> torch.Tensor:
    """Rows r0:r1 of `F.interpolate(x, size, mode='bilinear', align_corners=True)` for a
    [C, h, w] source x, reading only the source rows needed: `rows(idx)` returns x's rows
    `idx` (a LongTensor) as a float [C, len(idx), w] tensor."""
    (h, w), (H, W) = size_in, size
    y0, y1, ly = _axis(h, H, device)
    x0, x1, lx = _axis(w, W, device)
    band = torch.lerp(rows(y0[r0:r1]), rows(y1[r0:r1]), ly[r0:r1].view(1, -1, 1))   # [C, r, w]
    return band.index_select(-1, x0).lerp_(band.index_select(-1, x1), lx)              # [C, r, W]


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 25) -> torch.Tensor:
    """F.interpolate(x[None], size, mode='bilinear', align_corners=True)[0] for [C, h, w] x,
    computed in bands of output rows."""
    c, h, w = x.shape
    H, W = size
    if (h, w) == (H, W):
        return x.float()
    out = torch.empty(c, H, W, device=x.device)
    step = max(1, max_elements // max(1, c * max(w, W) * 3))
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        out[:, r0:r1] = bilinear_rows(lambda idx: x.index_select(1, idx).float(), (h, w), (H, W), r0, r1, x.device)
    return out


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 25) -> np.ndarray:
    """argmax over labels of `scores` [K, h, w] bilinearly resized (align_corners) to `size`,
    computed in bands of output rows so at most ~`max_elements` floats exist at once."""
    k, h, w = scores.shape
    H, W = size
    dtype = np.uint8 if k <= 256 else np.int32
    if (h, w) == (H, W):
        return channel_argmax(scores).cpu().numpy().astype(dtype)
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
        out[r0:r0 + len(gy)] = channel_argmax(band[0]).cpu().numpy().astype(dtype)
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
        """Single-scale: [K, h, w] label scores at the working resolution (long side `size`).
        Multi-scale: the official evaluator's [K, H, W] sum at the image's own size (K x H x W
        floats; `predict` never builds it when the per-scale maps are smaller)."""
        if not self.cfg.multi_scale:
            return self._single_scale(image)
        H, W = image.height, image.width
        total = torch.zeros(self.num_labels, H, W, device=self.device)
        for out in self.scale_scores(image):
            self._add_resized(total, out)
        return total

    def _single_scale(self, image: Image.Image) -> torch.Tensor:
        oh, ow = fit_long_side(image.height, image.width, self.size)
        x = self._pad(self._pixels(image, oh, ow), round_up(oh, self.patch), round_up(ow, self.patch))
        return self._run([x], flip=False)[0][:, :oh, :ow]

    def scale_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of the image at each scale: long side ceil(base_size x scale), the short
        side int(x + 0.5), as the official evaluator."""
        return [fit_long_side(height, width, math.ceil(self.cfg.base_size * s)) for s in self.cfg.scales]

    def _pixels_bilinear(self, rgb: np.ndarray, height: int, width: int) -> torch.Tensor:
        """[1, 3, h, w] in [0, 1]: the 8-bit image resized as the official evaluator does
        (F.interpolate, bilinear, align_corners=True, no antialiasing), band by band."""
        H, W = rgb.shape[:2]
        dev = self.device

        def rows(idx: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(rgb[idx.cpu().numpy()]).to(dev).permute(2, 0, 1).float().div_(255.0)

        if (H, W) == (height, width):
            return rows(torch.arange(H))[None]
        out = torch.empty(3, height, width, device=dev)
        step = max(1, self.cfg.max_elements // (9 * max(W, width)))
        for r0 in range(0, height, step):
            r1 = min(height, r0 + step)
            out[:, r0:r1] = bilinear_rows(rows, (H, W), (height, width), r0, r1, dev)
        return out[None]

    def scale_scores(self, image: Image.Image):
        """Yields, per scale, the official evaluator's `outputs` [K, h_s, w_s]: the scaled
        image run whole (padded to crop_size) or in sliding windows, flips added,
        overlaps averaged, cropped to the scaled image."""
        cfg = self.cfg
        if image.mode != "RGB":
            image = image.convert("RGB")
        rgb = np.asarray(image, dtype=np.uint8)
        crop, stride = cfg.crop_size, cfg.stride
        for scale, (oh, ow) in zip(cfg.scales, self.scale_sizes(image.height, image.width)):
            long = math.ceil(cfg.base_size * scale)
            x = self._pixels_bilinear(rgb, oh, ow)
            if long <= crop:
                yield self._run([self._pad(x, crop, crop)], cfg.flip)[0][:, :oh, :ow]
                continue
            x = self._pad(x, max(oh, crop), max(ow, crop))
            ph, pw = x.shape[-2:]
            wins = windows(ph, pw, crop, stride)
            crops = [self._pad(x[..., b.h0:b.h1, b.w0:b.w1], crop, crop) for b in wins]
            del x
            acc = torch.zeros(self.num_labels, ph, pw, device=self.device)
            count = torch.zeros(1, ph, pw, device=self.device)
            for b, logits in zip(wins, self._run(crops, cfg.flip)):
                acc[:, b.h0:b.h1, b.w0:b.w1] += logits[:, :b.h1 - b.h0, :b.w1 - b.w0]
                count[:, b.h0:b.h1, b.w0:b.w1] += 1
            yield (acc / count)[:, :oh, :ow]

    def _add_resized(self, total: torch.Tensor, out: torch.Tensor) -> None:
        """total [K, H, W] += out resized (bilinear, align_corners) to H x W, band by band."""
        k, H, W = total.shape
        h, w = out.shape[-2:]
        if (h, w) == (H, W):
            total += out
            return
        step = max(1, self.cfg.max_elements // max(1, k * max(w, W) * 3))
        for r0 in range(0, H, step):
            r1 = min(H, r0 + step)
            total[:, r0:r1] += bilinear_rows(lambda idx: out.index_select(1, idx), (h, w), (H, W), r0, r1, out.device)

    # masks -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: Image.Image) -> np.ndarray:
        """[H, W] label indices at the image's own size (uint8, or int32 for > 256 labels)."""
        H, W = image.height, image.width
        if not self.cfg.multi_scale:
            return upsample_argmax(self.scores(image), (H, W), self.cfg.max_elements)
        k = self.num_labels
        dtype = np.uint8 if k <= 256 else np.int32
        if H * W <= sum(h * w for h, w in self.scale_sizes(H, W)):
            # the official way: sum at the image's size (no bigger than the per-scale maps)
            return channel_argmax(self.scores(image)).cpu().numpy().astype(dtype)
        # keep each scale's map and sum their resizes band by band (same numbers)
        maps = list(self.scale_scores(image))
        out = np.empty((H, W), dtype=dtype)
        step = max(1, self.cfg.max_elements // max(1, k * W * 3))
        for r0 in range(0, H, step):
            r1 = min(H, r0 + step)
            band = torch.zeros(k, r1 - r0, W, device=self.device)
            for m in maps:
                h, w = m.shape[-2:]
                band += bilinear_rows(lambda idx, m=m: m.index_select(1, idx), (h, w), (H, W), r0, r1, m.device)
            out[r0:r1] = channel_argmax(band).cpu().numpy().astype(dtype)
        return out


def fractions(mask: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Pixel fraction of each label (every label listed, zeros included)."""
    counts = np.bincount(mask.reshape(-1), minlength=len(labels))[: len(labels)]
    total = max(1, mask.size)
    return {label: round(float(c) / total, 6) for label, c in zip(labels, counts)}
