"""XDoG edges and Otsu thresholding for CLIPasso's stroke-placement saliency map.

CLIPasso places strokes where CLIP attends *and* where the image has edges:
``map = (1 - xdog) * attention``. Two binary XDoG maps are available (`XDOG_VARIANTS`):

- ``official`` (the default, `xdog_official`): what the official CLIPasso code computes.
  Its input is the CLIP-normalised canvas (not the [0, 1] image), turned grey with
  scikit-image's ``rgb2gray``; D = G_sigma - gamma * G_{k sigma} with SciPy's
  ``gaussian_filter``; the soft map is 1 where D < eps and 1 + tanh(phi * D) where
  D >= eps (note: phi * D, not phi * (D - eps)); it is min-max scaled and kept where it
  is >= Otsu's threshold. With eps = -0.1 that map is 1 on strong dark-side edges
  (D < eps) *and* on bright flat areas (D > 0), 0 in between; ``1 - xdog`` is what
  places strokes.
- ``winnemoeller`` (`xdog_edges`): Winnemöller's soft threshold, 1 where D >= eps else
  1 + tanh(phi * (D - eps)), on the [0, 1] luminance, binarised by ``> Otsu``. Here
  **xdog is 1 on flat regions and 0 on edges** (dark lines on white, like a drawing).

Everything here is plain NumPy / SciPy image processing without gradients; the result
is turned into a tensor only where it meets attention.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from clipheads.core.errors import UserError

ArrayLike = Union[np.ndarray, torch.Tensor]
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_array(image: ArrayLike) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def to_grayscale(image: ArrayLike) -> np.ndarray:
    """[H, W] luminance in [0, 1] from [H, W], [H, W, 3] (arrays) or [3, H, W] (tensors); uint8 is rescaled."""
    is_tensor = isinstance(image, torch.Tensor)
    arr = _as_array(image)
    if arr.ndim == 3 and is_tensor and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr @ _LUMA
    if arr.ndim != 2:
        raise UserError(f"expected a grayscale [H, W] or RGB image, got shape {list(arr.shape)}")
    return np.nan_to_num(arr, nan=0.0)


def gaussian_blur(image: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian blur with mirror borders (no SciPy needed)."""
    if sigma <= 0:
        return image.copy()
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(kernel):
            acc += w * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out


def xdog(
    gray: ArrayLike,
    gamma: float = 0.98,
    phi: float = 200.0,
    eps: float = -0.1,
    sigma: float = 0.8,
    k: float = 10.0,
) -> np.ndarray:
    """Soft XDoG map in [0, 1]: 1 on flat regions, towards 0 on (the dark side of) edges.

    Winnemöller's extended difference of Gaussians D = G_sigma - gamma * G_{k sigma},
    soft-thresholded: 1 where D >= eps, else 1 + tanh(phi * (D - eps)).
    """
    img = to_grayscale(gray)
    diff = gaussian_blur(img, sigma) - gamma * gaussian_blur(img, sigma * k)
    return np.where(diff >= eps, 1.0, 1.0 + np.tanh(phi * (diff - eps)))


def otsu_threshold_numpy(values: ArrayLike, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance); foreground is ``values > threshold``."""
    v = _as_array(values).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise UserError("Otsu threshold of an empty (or all-NaN) image")
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = v.size - w0
    s0 = np.cumsum(hist * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def otsu_threshold(values: ArrayLike) -> float:
    """Otsu's threshold via scikit-image when installed, else `otsu_threshold_numpy`."""
    try:
        from skimage.filters import threshold_otsu
    except ImportError:
        return otsu_threshold_numpy(values)
    v = _as_array(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise UserError("Otsu threshold of an empty (or all-NaN) image")
    if v.max() - v.min() <= 0:
        return float(v.min())
    return float(threshold_otsu(v))


def xdog_edges(
    gray: ArrayLike,
    gamma: float = 0.98,
    phi: float = 200.0,
    eps: float = -0.1,
    sigma: float = 0.8,
    k: float = 10.0,
) -> np.ndarray:
    """Binary XDoG map (float32 {0, 1}) binarised by Otsu: 1 = flat, 0 = edge (paper convention)."""
    soft = xdog(gray, gamma=gamma, phi=phi, eps=eps, sigma=sigma, k=k)
    if soft.max() - soft.min() <= 1e-12:  # no edges at all: everything is flat
        return np.ones_like(soft, dtype=np.float32)
    return (soft > otsu_threshold(soft)).astype(np.float32)


XDOG_VARIANTS: tuple[str, ...] = ("official", "winnemoeller")


def xdog_official(
    image: ArrayLike,
    gamma: float = 0.98,
    phi: float = 200.0,
    eps: float = -0.1,
    sigma: float = 0.8,
    k: float = 10.0,
) -> np.ndarray:
    """Binary XDoG map (float32 {0, 1}) as the official CLIPasso code computes it.

    `image`: the CLIP-normalised canvas as [H, W, 3] (array) or [3, H, W] (tensor), or an
    [H, W] grey image. Computed in float32 like the official (a float32 tensor there).
    A map without any contrast (e.g. a white image) is all ones, i.e. no edges (the
    official divides by zero there).
    """
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2gray
    from skimage.filters import threshold_otsu

    is_tensor = isinstance(image, torch.Tensor)
    arr = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    arr = np.nan_to_num(arr.astype(np.float32, copy=False))
    if arr.ndim == 3 and is_tensor and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = rgb2gray(arr)
    if arr.ndim != 2:
        raise UserError(f"expected a grey [H, W] or RGB image, got shape {list(arr.shape)}")
    fine = gaussian_filter(arr, sigma)
    coarse = gaussian_filter(arr, sigma * k)
    diff = fine - gamma * coarse
    soft = np.where(diff < eps, np.float32(1.0), 1.0 + np.tanh(phi * diff)).astype(np.float32)
    scaled = soft - soft.min()
    top = float(scaled.max())
    if not np.isfinite(top) or top <= 1e-12:
        return np.ones(arr.shape, dtype=np.float32)
    scaled /= scaled.max()
    return (scaled >= threshold_otsu(scaled)).astype(np.float32)


def edge_saliency(attention: ArrayLike, xdog_map: ArrayLike) -> torch.Tensor:
    """CLIPasso's placement map ``(1 - xdog) * attention`` as a float32 tensor [H, W]."""
    attn = torch.as_tensor(_as_array(attention), dtype=torch.float32)
    edges = torch.as_tensor(_as_array(xdog_map), dtype=torch.float32)
    if attn.shape != edges.shape:
        raise UserError(f"attention {list(attn.shape)} and xdog map {list(edges.shape)} must have the same shape")
    return (1.0 - edges) * attn
