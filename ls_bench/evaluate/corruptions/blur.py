"""Blurs: gaussian_blur, defocus_blur, glass_blur and zoom_blur, linear filters on float64 images
with the reference's own bytes where a filter keeps a grey level (flat regions).

glass_blur does what the reference's loop does, a copy rather than the swap it intends (_glass_shift).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import Tensor

from ls_bench.evaluate.corruptions._common import (
    _apply,
    _filter_matrix,
    _gaussian_filter,
    _gaussian_kernel1d,
    to_float,
    to_uint8,
)


def _level_kept(y: Tensor, x: Tensor) -> Tensor:
    """Where a filter left grey level x in place: 255 y within 1e-9 of x, as a flat window makes it
    (and, by symmetry, some others). There the reference's bytes are its flat-region bytes, a
    function of x alone (_flat_blur, _zoom_flat); elsewhere float rounding cannot reach a grey level."""
    return (y * 255 - x).abs_() < 1e-9


def _lookup(table: np.ndarray, x: Tensor) -> Tensor:
    """table[x] for uint8 x and a 256-entry uint8 table (gather: ~4x faster than indexing)."""
    return torch.from_numpy(table).to(x.device).gather(0, x.reshape(-1).long()).view(x.shape)


@functools.lru_cache(maxsize=None)
def _flat_blur(sigma: float) -> np.ndarray:
    """What the reference's blur makes of a flat region of grey level k, for k = 0..255, as bytes.
    scipy sums a symmetric kernel as x w_0 + sum_{j = r..1} (x_-j + x_j) w_j (ni_filters.c,
    NI_Correlate1D), rows then columns; in float64 that is k/255 +- 1 ulp, which truncation turns
    into k or k - 1 depending on k and sigma (k - 1 for 56 of the 256 levels at sigma 0.4)."""
    w = _gaussian_kernel1d(sigma, 4.0)
    r = len(w) // 2
    v = np.arange(256) / 255.
    for _ in range(2):
        t = v * w[r]
        for j in range(r, 0, -1):
            t = t + (v + v) * w[r - j]
        v = t
    return np.uint8(np.clip(v, 0, 1) * 255)


def _blur_bytes(x: Tensor, sigma: float) -> Tensor:
    """uint8(clip(skimage.filters.gaussian(x / 255, sigma)) * 255) of uint8 x: skimage's defaults
    (mode 'nearest', truncate 4) with multichannel=True (no blur across channels). Where the blur
    keeps the grey level (flat windows), the reference's exact bytes (_flat_blur); elsewhere the
    float64 result, whose rounding differs from scipy's only in the last bit."""
    if len(_gaussian_kernel1d(sigma, 4.0)) == 1:  # radius int(4 sigma + 0.5) = 0 (glass_blur's 0.05)
        return x.clone()  # scipy multiplies by the weight 1.0: a copy
    y = _gaussian_filter(to_float(x), sigma, 4.0, "nearest")
    return torch.where(_level_kept(y, x), _lookup(_flat_blur(sigma), x), to_uint8(y))


def gaussian_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]  # sigma in pixels
    return _blur_bytes(x, c)


@functools.lru_cache(maxsize=None)
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's disk() for radius <= 8 (all CIFAR radii are <= 1.5): a 17x17 aliased disk
    normalised to sum 1, smoothed by cv2.GaussianBlur with a 3x3 kernel of sigma alias_blur, all in
    float32 as cv2 computes it; cropped to its non-zero support (at most 5x5)."""
    assert radius <= 8, "the reference switches to a (2r+1)^2 grid and a 5x5 blur above 8"
    L = np.arange(-8, 9)
    X, Y = np.meshgrid(L, L)
    disk = ((X ** 2 + Y ** 2) <= radius ** 2).astype(np.float32)
    disk /= np.sum(disk)
    # cv2.getGaussianKernel(3, sigma, CV_32F): exp(-t^2 / (2 sigma^2)) for t = -1, 0, 1, normalised, float32
    k1 = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias_blur ** 2))
    k1 = (k1 / k1.sum()).astype(np.float32)
    padded = np.pad(disk, 1, mode="reflect")  # numpy 'reflect' = BORDER_REFLECT_101, GaussianBlur's default
    rows = sum(k1[i] * padded[i:i + 17, :] for i in range(3))  # float32, rows then columns
    kernel = sum(k1[j] * rows[:, j:j + 17] for j in range(3))
    nz = np.nonzero(kernel.any(0))[0]
    return kernel[nz[0]:nz[-1] + 1, nz[0]:nz[-1] + 1]


def defocus_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    radius, alias_blur = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    k = _disk(radius, alias_blur)
    r = len(k) // 2
    H, W = x.shape[-2:]
    xf = to_float(x)  # float64 like the reference's image; the kernel stays float32, as cv2 makes it
    # cv2.filter2D: correlation, BORDER_REFLECT_101 (its default). Kernel row i is a row shift by
    # i - r, then a 1-D filter along the row with k[i]; rows i and -1-i are equal (a disk is symmetric).
    eye = np.eye(len(k))
    y = sum(_apply(xf, _filter_matrix(H, tuple(eye[i] + eye[-1 - i] if i < r else eye[i]), "mirror"),
                   _filter_matrix(W, tuple(k[i]), "mirror")) for i in range(r + 1))
    return to_uint8(y)


def _glass_shift(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """One pass of the reference's "local shuffle" for max_delta = 1, dx, dy in {-1, 0} of shape
    [B, H-2, W-2], for pixels (h, w), h, w in 2..H-1 (the loop runs from H-1 down to 2).

    The loop writes `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on an H x W x C numpy array, whose
    right-hand side holds two *views*: x[h, w] receives x[h', w'], then x[h', w'] receives the new
    x[h, w], i.e. itself. So each step copies, not swaps. Its source (h + dy, w + dx) lies at or
    before (h, w) in row-major order while the loop runs backwards, so the source is still the
    original pixel: one pass is a gather from the unchanged image.
    """
    B, C, H, W = x.shape
    rows = torch.arange(H, device=x.device).view(1, H, 1).expand(B, H, W).clone()
    cols = torch.arange(W, device=x.device).view(1, 1, W).expand(B, H, W).clone()
    rows[:, 2:, 2:] += dy
    cols[:, 2:, 2:] += dx
    src = (rows * W + cols).view(B, 1, H * W).expand(B, C, H * W)
    return x.reshape(B, C, H * W).gather(2, src).view(B, C, H, W)


GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma, max_delta, iterations


def glass_core(x: Tensor, offsets: Tensor, severity: int) -> Tensor:
    """glass_blur given its draws: offsets [B, iterations, 2 (dx, dy), H-2, W-2] in {-1, 0}."""
    sigma, _, iterations = GLASS[severity - 1]
    y = _blur_bytes(x, sigma)  # np.uint8(gaussian(x) * 255): the same bytes, a blur never exceeds 1
    for i in range(iterations):
        y = _glass_shift(y, offsets[:, i, 0], offsets[:, i, 1])
    return _blur_bytes(y, sigma)


def glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    _, max_delta, iterations = GLASS[severity - 1]
    B, C, H, W = x.shape
    # np.random.randint(-max_delta, max_delta) excludes the upper bound: offsets in {-1, 0}.
    offsets = torch.randint(-max_delta, max_delta, (B, iterations, 2, H - 2, W - 2), generator=g)
    return glass_core(x, offsets.to(x.device), severity)


def _zoom_matrix(n: int, z: float) -> np.ndarray:
    """[n, n] linear map of one axis of the reference's clipped_zoom: crop the central
    ceil(n / z) pixels, scipy.ndimage.zoom(order=1) them to round(ceil(n / z) * z) pixels, keep the
    central n. scipy's zoom samples output index o at input coordinate o * (in - 1) / (out - 1)."""
    ch = int(np.ceil(n / z))
    top = (n - ch) // 2
    out = int(round(ch * z))
    trim = (out - n) // 2
    ratio = (ch - 1) / (out - 1)
    A = np.zeros((n, n))
    for i in range(n):
        p = (trim + i) * ratio
        f = int(np.floor(p))
        A[i, top + f] += 1 - (p - f)
        if p > f and f + 1 < ch:
            A[i, top + f + 1] += p - f
    return A


ZOOMS = tuple(np.arange(1, stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26))  # 7, 12, 16, 21, 26 factors


@functools.lru_cache(maxsize=None)
def _zoom_operator(h: int, w: int, severity: int, device: torch.device) -> Tensor:
    """zoom_blur as one sparse [HW, HW] float64 matrix: (x + sum_z zoom_z(x)) / (len(zooms) + 1).
    The reference sums float32 images; where the sum is not flat, float64 rounded to float32 agrees
    with it but for the last bit."""
    zooms = ZOOMS[severity - 1]  # np.arange's float steps: severity 1 includes 1.06 itself
    op = np.eye(h * w)
    for z in zooms:
        op += np.kron(_zoom_matrix(h, z), _zoom_matrix(w, z))
    op /= len(zooms) + 1
    with warnings.catch_warnings():  # "sparse CSR support is in beta": fine for one matmul
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(op).to_sparse_csr().to(device)


@functools.lru_cache(maxsize=None)
def _zoom_flat(severity: int) -> np.ndarray:
    """The reference's zoom_blur of a flat region of grey level k, k = 0..255, as bytes: each zoom
    returns the float32 level v itself, and out += zoom(x) sums them one by one in float32, whose
    rounding decides between k and k - 1."""
    zooms = ZOOMS[severity - 1]
    v = (np.arange(256) / 255.).astype(np.float32)
    out = np.zeros_like(v)
    for _ in zooms:
        out += v
    return np.uint8(np.clip((v + out) / (len(zooms) + 1), 0, 1) * 255)


def zoom_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    B, C, H, W = x.shape
    flat = to_float(x).reshape(B * C, H * W)
    out = torch.sparse.mm(_zoom_operator(H, W, severity, x.device), flat.T).T.reshape(x.shape)  # CPU and CUDA
    y = to_uint8(out.float())  # the reference's zoom_blur is float32
    return torch.where(_level_kept(out, x), _lookup(_zoom_flat(severity), x), y)
