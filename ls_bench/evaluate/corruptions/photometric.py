"""Photometric corruptions, which change intensities and colours but move no pixel: fog (a plasma
fractal laid over the image), brightness and saturate (in HSV, as skimage.color computes it) and
contrast."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ls_bench.evaluate.corruptions._common import _uniform, to_float, to_uint8

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
    if x.shape[1] == 1:  # grey has no saturation: unchanged (the package docstring)
        return x.clone()
    h, s, v = rgb_to_hsv(to_float(x))
    return to_uint8(hsv_to_rgb(h, (s * scale + shift).clamp(0, 1), v))


def contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    xf = to_float(x)
    means = xf.mean((2, 3), keepdim=True)  # per image and channel
    return to_uint8((xf - means) * c + means)
