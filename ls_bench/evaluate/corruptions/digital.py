"""Digital corruptions: elastic_transform (OpenCV's affine warp, then scipy's map_coordinates),
pixelate (PIL's BOX resize, bit for bit) and jpeg_compression (libjpeg).

- elastic_transform follows OpenCV <= 4.10's warpAffine (coordinates rounded to 1/32 pixel), as in
  the OpenCV 3 of 2018 that made CIFAR-10-C; OpenCV >= 4.11 interpolates at exact coordinates,
  up to ~4 grey levels away.
- jpeg_compression uses torchvision.io's libjpeg on the CPU instead of PIL's (identical output here).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import Tensor

from ls_bench.evaluate.corruptions._common import _gaussian_filter, _source_index, _uniform, to_float, to_uint8


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
