"""What the corruption families share: the reference's uint8 <-> float conversions, random draws that
do not depend on the batching, and separable linear filters as small matrices with scipy's and
OpenCV's border modes (scipy.ndimage.gaussian_filter among them)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

# --- conversions and random draws ---------------------------------------------------------------


def to_float(x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """x / 255 like the reference's np.array(img) / 255., float64 as there unless a corruption's
    reference works in float32 (zoom_blur, elastic_transform) or only continuous noise is added."""
    return x.to(dtype) / 255


def to_uint8(x: Tensor) -> Tensor:
    """np.uint8(np.clip(x, 0, 1) * 255) of the reference, in x's dtype: truncation toward zero."""
    return x.clamp(0, 1).mul_(255).to(torch.uint8)


def _uniform(x: Tensor, n: int, g: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, n] uniforms in [0, 1) for the B images of x, drawn in one call (image-major)."""
    return torch.rand(x.shape[0], n, generator=g, dtype=dtype).to(x.device)


def _normal(x: Tensor, g: torch.Generator) -> Tensor:
    """Standard normals shaped like x. torch's CPU normal_ turns uniforms into normals in blocks of
    16, so each image draws a multiple of 16 and its numbers do not depend on the batching."""
    n = x[0].numel()
    return torch.randn(x.shape[0], -(-n // 16) * 16, generator=g)[:, :n].reshape(x.shape).to(x.device)


# --- linear filters as matrices ----------------------------------------------------------------


def _source_index(i: Tensor, n: int, mode: str) -> Tensor:
    """Where position i (any integer, also outside 0..n-1) of an axis of length n reads from.

    nearest: a a | a b c | c c (scipy 'nearest'); reflect: b a | a b c | c b (scipy 'reflect');
    mirror: c b | a b c | b a (scipy 'mirror' = OpenCV BORDER_REFLECT_101, cv2.filter2D's default).
    Reflections repeat, so any pad width works (an 8x8 digit under a 39-tap kernel).
    """
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    period = 2 * n if mode == "reflect" else 2 * n - 2
    if bool(i.min() < -period) or bool(i.max() >= period):  # further than one reflection: wrap
        i = i % period
    i = torch.maximum(i, -1 - i) if mode == "reflect" else i.abs()  # the mirror images of i < 0
    return torch.minimum(i, period - (mode == "reflect") - i)  # the second half of a period runs back


@functools.lru_cache(maxsize=None)
def _filter_matrix(n: int, weights: tuple[float, ...], mode: str) -> np.ndarray:
    """A correlation with `weights` (centred, odd length) along an axis of length n, border
    `mode`, as the [n, n] matrix A with y = A @ x: the padding folds into A, so a separable 2-D
    filter is two small matmuls A_h @ X @ A_w^T instead of pad + conv."""
    r = len(weights) // 2
    A = np.zeros((n, n))
    out = torch.arange(n)
    for t, w in enumerate(weights):
        np.add.at(A, (out.numpy(), _source_index(out + t - r, n, mode).numpy()), w)
    return A


def _apply(x: Tensor, rows: np.ndarray, cols: np.ndarray) -> Tensor:
    """rows @ x @ cols^T over the last two axes of x, in x's dtype."""
    a = torch.from_numpy(rows).to(x.device, x.dtype)
    b = torch.from_numpy(cols).to(x.device, x.dtype)
    # The right product as one [*, W] @ [W, W] matmul: ~2x faster on the CPU than broadcast bmm.
    return ((a @ x).reshape(-1, x.shape[-1]) @ b.T).view(x.shape)


def _gaussian_kernel1d(sigma: float, truncate: float) -> tuple[float, ...]:
    """scipy.ndimage's kernel: radius int(truncate * sigma + 0.5), exp(-x^2 / 2 sigma^2), sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return tuple(phi / phi.sum())


def _gaussian_filter(x: Tensor, sigma: float, truncate: float, mode: str) -> Tensor:
    """scipy.ndimage.gaussian_filter over the last two axes (what skimage.filters.gaussian calls;
    multichannel=True leaves the channel axis alone), border by `mode`."""
    if sigma <= 1e-15:  # scipy skips an axis with sigma 0
        return x
    w = _gaussian_kernel1d(sigma, truncate)
    H, W = x.shape[-2:]
    return _apply(x, _filter_matrix(H, w, mode), _filter_matrix(W, w, mode))
