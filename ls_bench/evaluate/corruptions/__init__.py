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

Layout: _common.py (conversions, random draws, linear filters), then one module per family,
noise.py, blur.py, photometric.py (fog, brightness, saturate, contrast) and digital.py
(elastic_transform, pixelate, jpeg_compression), whose docstrings note where their corruptions
depart from the reference code; this module holds the registry and the entry points.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ls_bench.errors import invalid
from ls_bench.evaluate.corruptions._common import _gaussian_filter, to_float, to_uint8
from ls_bench.evaluate.corruptions.blur import (
    GLASS,
    ZOOMS,
    _disk,
    defocus_blur,
    gaussian_blur,
    glass_blur,
    glass_core,
    zoom_blur,
)
from ls_bench.evaluate.corruptions.digital import (
    _affine_transform,
    _map_coordinates,
    _warp_affine,
    affine_points,
    elastic_core,
    elastic_params,
    elastic_transform,
    jpeg_compression,
    pixelate,
    resize_box,
)
from ls_bench.evaluate.corruptions.noise import (
    SHOT,
    gaussian_noise,
    impulse_noise,
    shot_core,
    shot_noise,
    speckle_noise,
)
from ls_bench.evaluate.corruptions.photometric import (
    FOG,
    brightness,
    contrast,
    fog,
    fog_core,
    hsv_to_rgb,
    plasma_size,
    rgb_to_hsv,
    saturate,
)
from ls_bench.seeds import derive_seed

# The registry and entry points, each family's corruptions and helpers, and the private helpers that
# tests/test_corruptions.py checks against independent references (scipy, OpenCV's formulas).
__all__ = ["CORRUPTIONS", "CORRUPTION_NAMES", "CPU_BATCH", "MISSING", "SEVERITIES", "Corruption",
           "check_corruptions", "corrupt", "resolve_corruptions",
           "to_float", "to_uint8",
           "SHOT", "gaussian_noise", "impulse_noise", "shot_core", "shot_noise", "speckle_noise",
           "GLASS", "ZOOMS", "defocus_blur", "gaussian_blur", "glass_blur", "glass_core", "zoom_blur",
           "FOG", "brightness", "contrast", "fog", "fog_core", "hsv_to_rgb", "plasma_size", "rgb_to_hsv", "saturate",
           "affine_points", "elastic_core", "elastic_params", "elastic_transform", "jpeg_compression", "pixelate",
           "resize_box",
           "_affine_transform", "_disk", "_gaussian_filter", "_map_coordinates", "_warp_affine"]

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]

MISSING = {"motion_blur": "needs ImageMagick's motion blur", "snow": "needs ImageMagick's motion blur",
           "frost": "needs the reference's frost photographs", "spatter": "needs OpenCV's Canny and distance transform"}


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
            raise invalid("eval.corruptions", name, f"not implemented here ({MISSING[name]}); "
                          f"use all or some of {', '.join(CORRUPTION_NAMES)}")
        else:
            raise invalid("eval.corruptions", name, f"use all or some of {', '.join(CORRUPTION_NAMES)}")
    return list(dict.fromkeys(out))


def check_corruptions(names: Sequence[str] | str, severities: Sequence[int]) -> None:
    """Raise ConfigError (one line) for an unknown corruption name or a severity outside 1..5."""
    resolve_corruptions(names)
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s not in SEVERITIES:
            raise invalid("eval.severities", s, "severities are the integers 1..5 of CIFAR-10-C")


def corrupt(x: Tensor, name: str, severity: int, seed: int, batch_size: int = 1000) -> Tensor:
    """Corrupt uint8 images [N, C, H, W] with one corruption at one severity, batch by batch.

    The generator is seeded from sha256(f"{seed}/{name}/{severity}") (ls_bench.seeds.derive_seed),
    so a sweep sees the same corrupted test set in every run with the same seed.
    """
    if name not in CORRUPTIONS:
        resolve_corruptions([name])  # raises the one-line error (also for "all")
        raise invalid("eval.corruptions", name, "corrupt() takes one corruption name, not all")
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
