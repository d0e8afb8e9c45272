"""CIFAR-10-C corruptions as batched ops on uint8 image tensors [N, C, H, W] (C = 1 or 3), on any device.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019. Parameters and formulas are the 32x32 CIFAR ones of the authors' script
hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py (not ImageNet-C's); names are the
CIFAR-10-C file names, in that script's order.

Not implemented (4 of the 19):
- motion_blur: ImageMagick's MagickMotionBlurImage (through Wand); no batched tensor equivalent.
- snow: its snow layer goes through the same ImageMagick motion blur.
- frost: blends crops of frost photographs that ship with the reference code, not with ls-bench.
- spatter: severities 1-3 need OpenCV's Canny edges, distance transform and histogram equalisation.

Conventions
- CORRUPTIONS[name](x, severity, generator): uint8 [B, C, H, W] in, uint8 of the same shape and
  device out, severity 1..5, a CPU torch.Generator; `corrupt` runs one over a whole split.
- Bytes out as the reference makes them, np.uint8(np.clip(x, 0, 1) * 255): truncation (to_uint8).
- Randomness: one CPU generator per (seed, name, severity), draws moved to the images' device.
  Results do not depend on the device, on the batch size (one image-major draw per batch, and
  torch's CPU samplers consume their stream in order) or on the other corruptions run. These are
  not numpy's streams: new samples of the same distributions, not the CIFAR-10-C files.
- Precision as in the reference: float64 where it computes in float64 (np.array(img) / 255.),
  float32 where it does (zoom_blur, elastic_transform) and for the Gaussian noises (continuous:
  precision cannot matter); PIL's integer arithmetic emulated exactly (pixelate). Truncation makes
  the reference's bytes depend on its rounding wherever a value lands on a grey level, as in flat
  regions; there gaussian_blur, glass_blur and zoom_blur take the reference's bytes from a table.
- Agreement with the reference code run with its libraries (scikit-image 0.26, OpenCV 4.10,
  SciPy 1.17, Pillow 13) on 200 CIFAR-10 test images with the same random draws, checked outside
  the tests: pixelate, jpeg_compression, contrast, brightness, saturate, fog and defocus_blur
  bit-identical; gaussian_blur, zoom_blur and glass_blur >= 99.97% of the values identical;
  elastic_transform >= 99.6% (OpenCV solves for the affine matrix with LAPACK, whose last bit can
  move a 1/32-pixel rounding); every remaining value within +-1 grey level.
- Grey images (C = 1): each corruption acts per channel, as the reference does on each RGB
  channel; brightness is then clip(x + c) (the reference's result for R = G = B); saturate returns
  the image unchanged (grey has no saturation; at severities 4-5 the reference would tint a grey
  RGB image red, which one channel cannot hold).
- Other sizes (e.g. 8x8 digits): the pixel-unit parameters (sigmas, displacements, shuffles, zoom
  factors) are applied as they are; pixelate resizes to int(H*c) x int(W*c) and back; fog crops a
  32x32 plasma (a larger power of two for larger images).
- jpeg_compression uses torchvision.io's libjpeg on the CPU instead of PIL's (identical output here).
- glass_blur does what the reference's loop does, a copy rather than the swap it intends (_glass_shift).
- elastic_transform follows OpenCV <= 4.10's warpAffine (coordinates rounded to 1/32 pixel), as in
  the OpenCV 3 of 2018 that made CIFAR-10-C; OpenCV >= 4.11 interpolates at exact coordinates,
  up to ~4 grey levels away.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ls_bench.errors import bad  # the same function ls_bench.config re-exports
from ls_bench.seeds import derive_seed

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]

MISSING = {"motion_blur": "needs ImageMagick's motion blur", "snow": "needs ImageMagick's motion blur",
           "frost": "needs the reference's frost photographs", "spatter": "needs OpenCV's Canny and distance transform"}


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


# --- noise ---------------------------------------------------------------------------------------


def gaussian_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]  # std, in units of the [0, 1] range
    return to_uint8(to_float(x, torch.float32) + c * _normal(x, g))


_GUIDE = 1024  # guide-table bins per grey level (a power of two, so u * _GUIDE is exact)


@functools.lru_cache(maxsize=None)
def _shot_tables(c: int, device: torch.device) -> tuple:
    """Inverse-CDF tables of X ~ Poisson(k/255 * c) for the 256 grey levels k, flattened [256, n].

    cdf[k, n] = P(X <= n) for n < n_max, where P(X > n_max) < 1e-30 (the last entry is set above
    every u); out[k, n] = the pixel the reference makes of X = n: uint8(clip(n / c, 0, 1) * 255).
    Guide table (Chen & Asau 1974; Devroye 1986, ch. III): for u in bin j = [j, j+1) / _GUIDE,
    start[k, j] = the first n with cdf > j / _GUIDE (X >= it), end[k, j] an n with cdf > u (X <= it),
    wide[k, j] = end - start > 1, the bin holds several jumps of the CDF.
    """
    lam = torch.arange(256, dtype=torch.float64) / 255 * c  # the reference's (img / 255.) * c
    n_max = int(c + 12 * math.sqrt(c) + 40)
    n = torch.arange(n_max, dtype=torch.float64)
    log_pmf = n * lam[:, None].clamp_min(1e-300).log() - lam[:, None] - torch.lgamma(n + 1)
    log_pmf[0] = -math.inf
    log_pmf[0, 0] = 0.0  # level 0: lam = 0, X = 0
    cdf = log_pmf.exp().cumsum(1)
    cdf[:, -1] = 2.0
    edges = torch.arange(_GUIDE + 1, dtype=torch.float64) / _GUIDE
    first = torch.searchsorted(cdf, edges.expand(256, -1).contiguous(), right=True)  # [256, _GUIDE + 1]
    offset = torch.arange(256)[:, None] * n_max
    start, end = first[:, :-1] + offset, first[:, 1:].clamp_max(n_max - 1) + offset
    out = ((n / c).clamp(0, 1) * 255).to(torch.uint8).expand(256, -1)
    return tuple(t.flatten().to(device) for t in (cdf, start, end, end - start > 1, out))


SHOT = (500, 250, 100, 75, 50)  # photons per unit intensity: Poisson(x * c) / c


def shot_core(x: Tensor, u: Tensor, severity: int) -> Tensor:
    """shot_noise given its draws: u float64 uniforms shaped like x, X = the inverse CDF at u."""
    c = SHOT[severity - 1]
    cdf, start, end, wide, out = _shot_tables(c, x.device)
    u = u.reshape(-1)
    key = x.reshape(-1).long() * _GUIDE + (u * _GUIDE).long()  # (grey level, guide bin)
    pos = start.gather(0, key)  # gather: ~4x faster than indexing here
    pos += u >= cdf.gather(0, pos)  # X found, unless u's guide bin holds several jumps (tails: ~0.3%)
    far = wide.gather(0, key).nonzero().squeeze(1)
    lo, hi, uf = pos[far], end[key[far]], u[far]  # X in [lo, hi]
    while bool((lo < hi).any()):  # bisect for the first n with u < cdf[n]
        mid = (lo + hi) // 2
        above = uf < cdf[mid]
        lo, hi = torch.where(above, lo, mid + 1), torch.where(above, mid, hi)
    pos[far] = lo
    return out.gather(0, pos).view(x.shape)


def shot_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Poisson(x * c) / c by inverse CDF from one float64 uniform per value: exact to the tables'
    float64 precision, and ~4x faster than torch.poisson's sampler here."""
    u = torch.rand(x.shape, generator=g, dtype=torch.float64).to(x.device)
    return shot_core(x, u, severity)


def impulse_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """skimage.util.random_noise(mode='s&p', amount=c): each value flips with probability c, to 0
    or 1 with probability 1/2 each; unflipped values are kept exactly."""
    c = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    u = _uniform(x, x[0].numel(), g).view(x.shape)
    return torch.where(u < c / 2, 0, torch.where(u < c, 255, x)).to(torch.uint8)  # pepper, salt, kept


def speckle_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.06, 0.1, 0.12, 0.16, 0.2)[severity - 1]  # std of the multiplicative noise: x + x * N(0, c)
    xf = to_float(x, torch.float32)
    return to_uint8(xf + xf * (c * _normal(x, g)))


# --- blurs ---------------------------------------------------------------------------------------


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


def _level_kept(y: Tensor, x: Tensor) -> Tensor:
    """Where a filter left grey level x in place: 255 y within 1e-9 of x, as a flat window makes it
    (and, by symmetry, some others). There the reference's bytes are its flat-region bytes, a
    function of x alone (_flat_blur, _zoom_flat); elsewhere float rounding cannot reach a grey level."""
    return (y * 255 - x).abs_() < 1e-9


def _lookup(table: np.ndarray, x: Tensor) -> Tensor:
    """table[x] for uint8 x and a 256-entry uint8 table (gather: ~4x faster than indexing)."""
    return torch.from_numpy(table).to(x.device).gather(0, x.reshape(-1).long()).view(x.shape)


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


# --- weather ---------------------------------------------------------------------------------------


def _plasma(u: Tensor, mapsize: int, decay: float) -> Tensor:
    """The reference's plasma_fractal (diamond-square) for a batch: u [B, mapsize^2 - 1] uniforms
    in [0, 1) used in the reference's order of np.random.uniform calls; returns [B, m, m] in [0, 1].

    wibbledmean adds wibble * uniform(-wibble, wibble), i.e. noise of scale wibble^2, as written.
    """
    B = u.shape[0]
    a = torch.zeros(B, mapsize, mapsize, dtype=u.dtype, device=u.device)
    sizes = [(mapsize // s) ** 2 for s in (2 ** np.arange(int(np.log2(mapsize)), 0, -1)) for _ in range(3)]
    draws = iter(u.split(sizes, dim=1))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        return total / 4 + wibble * (2 * wibble * next(draws).view_as(total) - wibble)

    while step >= 2:
        h = step // 2
        corner = a[:, ::step, ::step]
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        a[:, h::step, h::step] = wibbled_mean(square)
        dr, ul = a[:, h::step, h::step], a[:, ::step, ::step]
        a[:, ::step, h::step] = wibbled_mean((dr + dr.roll(1, 1)) + (ul + ul.roll(-1, 2)))
        a[:, h::step, ::step] = wibbled_mean((dr + dr.roll(1, 2)) + (ul + ul.roll(-1, 1)))
        step //= 2
        wibble /= decay
    a = a - a.amin((1, 2), keepdim=True)
    return a / a.amax((1, 2), keepdim=True)


FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # fog strength, plasma wibble decay


def plasma_size(h: int, w: int) -> int:
    return max(32, 1 << (max(h, w) - 1).bit_length())  # the reference's 32, or a power of two that covers


def fog_core(x: Tensor, u: Tensor, severity: int) -> Tensor:
    """fog given its draws: u [B, plasma_size^2 - 1] uniforms for the plasma fractal."""
    c, decay = FOG[severity - 1]
    H, W = x.shape[-2:]
    plasma = _plasma(u, plasma_size(H, W), decay)[:, None, :H, :W]
    xf = to_float(x)
    max_val = xf.amax((1, 2, 3), keepdim=True)  # of the clean image, over all channels
    return to_uint8((xf + c * plasma) * max_val / (max_val + c))


def fog(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    m = plasma_size(*x.shape[-2:])
    return fog_core(x, _uniform(x, m * m - 1, g, torch.float64), severity)


# --- colour (HSV as skimage.color.rgb2hsv / hsv2rgb) --------------------------------------------------


def rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B, 3, H, W] RGB in [0, 1] -> H, S, V [B, H, W] in [0, 1], skimage's formulas and tie order."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    grey = delta == 0  # H = S = 0; the divisions below are masked there
    # skimage assigns red-, then green-, then blue-is-max: the later assignment wins ties.
    blue, green = b == v, g == v
    sector = torch.where(blue, 4.0, torch.where(green, 2.0, 0.0))
    h = sector + torch.where(blue, r - g, torch.where(green, b - r, g - b)) / delta
    return torch.where(grey, 0.0, (h / 6) % 1), torch.where(grey, 0.0, delta / v), v


# hsv2rgb's six sectors, as indices into (v, p, q, t): (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
_SECTORS = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """skimage.color.hsv2rgb of H, S, V [B, H, W] -> RGB [B, 3, H, W]."""
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    parts = torch.stack([v, v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)], 1)  # v, p, q, t
    idx = _SECTORS.to(h.device)[hi.long() % 6].permute(0, 3, 1, 2)  # [B, 3, H, W]
    return parts.gather(1, idx)


def brightness(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]  # added to V
    xf = to_float(x)
    if x.shape[1] == 1:  # R = G = B: S = 0, so hsv2rgb returns V for every channel
        return to_uint8((xf + c).clamp(0, 1))
    h, s, v = rgb_to_hsv(xf)
    return to_uint8(hsv_to_rgb(h, s, (v + c).clamp(0, 1)))


def saturate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    scale, shift = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]  # S -> S * scale + shift
    if x.shape[1] == 1:  # grey has no saturation: unchanged (module docstring)
        return x.clone()
    h, s, v = rgb_to_hsv(to_float(x))
    return to_uint8(hsv_to_rgb(h, (s * scale + shift).clamp(0, 1), v))


def contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    xf = to_float(x)
    means = xf.mean((2, 3), keepdim=True)  # per image and channel
    return to_uint8((xf - means) * c + means)


# --- digital -------------------------------------------------------------------------------------


def elastic_params(severity: int) -> tuple[float, float, float]:
    """(alpha, sigma, affine): displacement scale, its smoothing sigma, affine jitter; in pixels."""
    IMSIZE = 32
    return ((IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08), (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
            (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06), (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
            (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03))[severity - 1]


def affine_points(h: int, w: int) -> Tensor:
    """The reference's three (x, y) control points around the centre, before jitter."""
    center = torch.tensor([h // 2, w // 2], dtype=torch.float32)  # np.float32(shape_size) // 2
    size = min(h, w) // 3
    return torch.stack([center + size, torch.stack([center[0] + size, center[1] - size]), center - size])


def _taps(x: Tensor, rows: Tensor, cols: Tensor, mode: str) -> list[Tensor]:
    """The 4 bilinear neighbours (r, c), (r, c+1), (r+1, c), (r+1, c+1) of every channel of x
    [B, C, H, W] for integer (rows, cols) [B, H', W'], each read through the border `mode`."""
    B, C, H, W = x.shape
    flat = x.reshape(B, C, H * W)
    r = [_source_index(rows + d, H, mode) * W for d in (0, 1)]
    c = [_source_index(cols + d, W, mode) for d in (0, 1)]
    return [flat.gather(2, (r[i] + c[j]).view(B, 1, -1).expand(B, C, -1)).view(B, C, *rows.shape[1:])
            for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]


def _affine_transform(src: Tensor, dst: Tensor) -> Tensor:
    """cv2.getAffineTransform(src [3, 2], dst [B, 3, 2]) -> M [B, 2, 3] with M [x, y, 1]^T = dst,
    float64. OpenCV solves it by LU (LAPACK in the pip wheels): last-bit differences in M can move
    one of _warp_affine's 1/32-pixel roundings: +-1 grey level on 0.03-0.4% of the values."""
    P = torch.cat([src, torch.ones(3, 1)], 1).double().to(dst.device)
    return torch.linalg.solve(P, dst.double()).transpose(1, 2)


def _warp_affine(x: Tensor, M: Tensor) -> Tensor:
    """cv2.warpAffine(x, M, (W, H), INTER_LINEAR, BORDER_REFLECT_101) of float32 x for M [B, 2, 3]
    in (x, y) order: dst(p) = src(M^-1 p), as OpenCV <= 4.10 computes it (imgwarp.cpp): source
    coordinates in fixed point, rounded to 1/32 pixel (AB_BITS = 10, INTER_BITS = 5), float32
    weights from its 32x32 table, summed in its order. (OpenCV >= 4.11 no longer rounds to 1/32.)"""
    B, C, H, W = x.shape
    # cv2.invertAffineTransform
    det = M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]
    inv_det = torch.where(det != 0, 1 / det, 0.0)
    a11, a22 = M[:, 1, 1] * inv_det, M[:, 0, 0] * inv_det
    a12, a21 = -M[:, 0, 1] * inv_det, -M[:, 1, 0] * inv_det
    b1 = -a11 * M[:, 0, 2] - a12 * M[:, 1, 2]
    b2 = -a21 * M[:, 0, 2] - a22 * M[:, 1, 2]
    row = torch.arange(H, dtype=torch.float64, device=x.device).view(1, H, 1)
    col = torch.arange(W, dtype=torch.float64, device=x.device).view(1, 1, W)

    def source(ax: Tensor, ay: Tensor, b: Tensor) -> Tensor:  # ax * col + ay * row + b in 1/32 pixel
        ax, ay, b = (t.view(B, 1, 1) for t in (ax, ay, b))
        fixed = torch.round((ay * row + b) * 1024) + 16 + torch.round(ax * col * 1024)
        return torch.div(fixed, 32, rounding_mode="floor").long()

    X, Y = source(a11, a12, b1), source(a21, a22, b2)
    fx, fy = ((X & 31).float() / 32)[:, None], ((Y & 31).float() / 32)[:, None]  # two's complement: floor
    p00, p01, p10, p11 = _taps(x, Y >> 5, X >> 5, "mirror")
    return p00 * ((1 - fy) * (1 - fx)) + p01 * ((1 - fy) * fx) + p10 * (fy * (1 - fx)) + p11 * (fy * fx)


def _map_coordinates(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """scipy.ndimage.map_coordinates(order=1, mode='reflect') of every channel of x at float64
    (rows, cols) [B, H', W']: float64 weights as scipy uses, the result in x's dtype."""
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = (rows - r0)[:, None], (cols - c0)[:, None]
    p00, p01, p10, p11 = _taps(x, r0.long(), c0.long(), "reflect")
    out = p00 * ((1 - fr) * (1 - fc))  # float64 from here: a flat region stays exactly flat
    out.addcmul_(p01, (1 - fr) * fc).addcmul_(p10, fr * (1 - fc)).addcmul_(p11, fr * fc)
    return out.to(x.dtype)


def elastic_core(xf: Tensor, jitter: Tensor, fields: Tensor, severity: int) -> Tensor:
    """The reference's elastic_transform given its random draws: jitter [B, 3, 2] (float32, added
    to the control points), fields [B, 2, H, W] uniform(-1, 1) (float64) for dx, then dy."""
    alpha, sigma, _ = elastic_params(severity)
    B, C, H, W = xf.shape
    pts1 = affine_points(H, W)
    warped = _warp_affine(xf, _affine_transform(pts1, pts1.to(xf.device) + jitter))
    if alpha == 0:  # severity 1: no displacement, map_coordinates at the pixel centres copies
        return warped
    d = (_gaussian_filter(fields, sigma, 3.0, "reflect") * alpha).float()  # dx, dy in pixels
    rows = torch.arange(H, dtype=torch.float64, device=xf.device).view(H, 1) + d[:, 1].double()
    cols = torch.arange(W, dtype=torch.float64, device=xf.device).view(1, W) + d[:, 0].double()
    return _map_coordinates(warped, rows, cols)


def elastic_transform(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    B, C, H, W = x.shape
    u = _uniform(x, 6 + 2 * H * W, g, torch.float64)
    affine = elastic_params(severity)[2]
    jitter = (2 * affine * u[:, :6] - affine).float().view(B, 3, 2)  # uniform(-a, a).astype(float32)
    fields = (2 * u[:, 6:] - 1).view(B, 2, H, W)  # uniform(-1, 1) for dx, then dy
    return to_uint8(elastic_core(to_float(x, torch.float32), jitter, fields, severity))


@functools.lru_cache(maxsize=None)
def _box_weights(n_in: int, n_out: int) -> np.ndarray:
    """PIL's BOX resampling weights [n_out, n_in] in its 8-bit fixed point (libImaging/Resample.c,
    precompute_coeffs + normalize_coeffs_8bpc): input pixel x counts for output xx when its centre,
    scaled by 1/max(scale, 1), lies within (-0.5, 0.5] of xx's centre; weights equal, summing to 1,
    times 2^22 and rounded. Upscaling makes this nearest-neighbour."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    W = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        w = np.array([1.0 if -0.5 < (x - center + 0.5) * (1.0 / filterscale) <= 0.5 else 0.0 for x in range(lo, hi)])
        if w.sum() != 0:
            w /= w.sum()
        W[xx, lo:hi] = np.floor(0.5 + w * (1 << 22))
    return W


def resize_box(x: Tensor, h: int, w: int) -> Tensor:
    """PIL Image.resize((w, h), BOX) of uint8 [B, C, H, W], bit for bit: a horizontal pass to
    uint8, then a vertical one, each (sum of fixed-point weights * pixels + 2^21) >> 22. Float64
    holds those integer sums exactly."""
    def one_pass(y: Tensor, n_out: int) -> Tensor:  # along the last axis
        weights = torch.from_numpy(_box_weights(y.shape[-1], n_out)).to(y.device)
        if bool(((weights == 0) | (weights == 1 << 22)).all()):  # one pixel per output: a selection
            return y @ (weights / (1 << 22)).T
        return (y @ weights.T).add_(1 << 21).div_(1 << 22).floor_()

    y = x.double()
    if w != x.shape[-1]:
        y = one_pass(y, w)
    if h != x.shape[-2]:
        y = one_pass(y.transpose(-1, -2), h).transpose(-1, -2)
    return y.to(torch.uint8)  # weights >= 0 summing to <= 2^22: already 0..255


def pixelate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]  # side of the low-resolution image, as a fraction
    H, W = x.shape[-2:]
    return resize_box(resize_box(x, int(H * c), int(W * c)), H, W)


def _jpeg(images: Tensor, quality: int) -> list[Tensor]:
    from torchvision.io import decode_jpeg, encode_jpeg

    return decode_jpeg(encode_jpeg(list(images.unbind(0)), quality=quality))


def jpeg_compression(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Encode at the severity's quality and decode, per image on the CPU: libjpeg through
    torchvision.io (4:2:0 chroma like PIL's default; grey images as one-channel JPEGs), ~5x faster
    than PIL here, in threads (~1.5x more on 2 cores). torchvision 0.29 deprecates its codecs;
    tests/test_corruptions.py compares with PIL, the reference's own path."""
    from concurrent.futures import ThreadPoolExecutor

    quality = (80, 65, 58, 50, 40)[severity - 1]
    threads = max(1, torch.get_num_threads())
    with warnings.catch_warnings(), ThreadPoolExecutor(threads) as pool:
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        parts = pool.map(lambda c: _jpeg(c, quality), x.cpu().contiguous().chunk(2 * threads))
        images = [im for part in parts for im in part]
    return torch.stack(images).to(x.device)


# --- registry and entry point ---------------------------------------------------------------------

CORRUPTIONS: dict[str, Corruption] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, zoom_blur, fog, brightness,
    contrast, elastic_transform, pixelate, jpeg_compression, speckle_noise, gaussian_blur, saturate)}
CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)
SEVERITIES = (1, 2, 3, 4, 5)
CPU_BATCH = 256


def resolve_corruptions(names: Sequence[str] | str) -> list[str]:
    """Names as given, `all` expanded to CORRUPTION_NAMES, duplicates dropped; unknown names refused."""
    out: list[str] = []
    for name in [names] if isinstance(names, str) else list(names):
        if name == "all":
            out += CORRUPTION_NAMES
        elif name in CORRUPTIONS:
            out.append(name)
        elif name in MISSING:
            raise bad("eval.corruptions", name, f"not implemented here ({MISSING[name]}); "
                      f"use all or some of {', '.join(CORRUPTION_NAMES)}")
        else:
            raise bad("eval.corruptions", name, f"use all or some of {', '.join(CORRUPTION_NAMES)}")
    return list(dict.fromkeys(out))


def check_corruptions(names: Sequence[str] | str, severities: Sequence[int]) -> None:
    """Raise ConfigError (one line) for an unknown corruption name or a severity outside 1..5."""
    resolve_corruptions(names)
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s not in SEVERITIES:
            raise bad("eval.severities", s, "severities are the integers 1..5 of CIFAR-10-C")


def corrupt(x: Tensor, name: str, severity: int, seed: int, batch_size: int = 1000) -> Tensor:
    """Corrupt uint8 images [N, C, H, W] with one corruption at one severity, batch by batch.

    The generator is seeded from sha256(f"{seed}/{name}/{severity}") (ls_bench.seeds.derive_seed),
    so a sweep sees the same corrupted test set in every run with the same seed.
    """
    if name not in CORRUPTIONS:
        resolve_corruptions([name])  # raises the one-line error (also for "all")
        raise bad("eval.corruptions", name, "corrupt() takes one corruption name, not all")
    check_corruptions([name], [severity])
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape[2:]) < 4:
        raise ValueError(f"corrupt needs uint8 images [N, 1 or 3, H >= 4, W >= 4]; got {x.dtype} {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    g = torch.Generator().manual_seed(derive_seed(seed, f"{name}/{severity}"))
    # On the CPU, at most CPU_BATCH images at a time: their float64 intermediates (6 MB each) then
    # stay in cache (elastic_transform 1.6x faster than with 1000). Results do not depend on it.
    step = min(batch_size, CPU_BATCH) if x.device.type == "cpu" else batch_size
    out = torch.empty_like(x)
    for i in range(0, len(x), step):
        out[i:i + step] = CORRUPTIONS[name](x[i:i + step], severity, g)
    return out


if __name__ == "__main__":  # benchmark: python -m ls_bench.corruptions [N] [names...]
    import sys
    import time

    torch.set_num_threads(2)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    wall = cpu = 0.0
    for name in sys.argv[2:] or CORRUPTION_NAMES:
        t0, c0 = time.perf_counter(), time.process_time()
        for severity in SEVERITIES:
            corrupt(images, name, severity, seed=0)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        wall, cpu = wall + dt, cpu + dc
        print(f"{name:18s} {dt:6.2f} s wall {dc:6.2f} s CPU for 5 severities x {n} images")
    print(f"{'total':18s} {wall:6.2f} s wall {cpu:6.2f} s CPU, {torch.get_num_threads()} threads")
