"""Noise: gaussian_noise, shot_noise, impulse_noise and speckle_noise, per value and independent."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ls_bench.evaluate.corruptions._common import _normal, _uniform, to_float, to_uint8


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
