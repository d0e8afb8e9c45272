"""CIFAR-10-C corruptions against independent per-image references of make_cifar_c.py's formulas.

References: SciPy (ndimage filters, zoom, map_coordinates; stats.poisson), Pillow (BOX resize,
JPEG), colorsys (HSV), numpy transcriptions of the reference's loops fed the same random draws,
and noise statistics. Images are synthetic 32x32 RGB (flat regions incl. 0 and 255, gradients,
texture, a grey image) and scikit-learn's 8x8 digits for C = 1.
"""

from __future__ import annotations

import colorsys
import hashlib
import io

import numpy as np
import pytest
import scipy.ndimage as nd
import torch
from PIL import Image
from scipy.stats import poisson

from ls_bench.errors import ConfigError
from ls_bench.evaluate import corruptions as C
from ls_bench.evaluate.corruptions import CORRUPTION_NAMES, CORRUPTIONS, check_corruptions, corrupt, resolve_corruptions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision.*")

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "fog", "elastic_transform"}


def make_images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size]: gradients, texture on half the pixels, flat white / black /
    random-colour blocks; image 0 is grey (R = G = B), to exercise HSV's ties."""
    rng = np.random.default_rng(seed)
    x = nd.zoom(rng.uniform(0, 255, (n, 3, 4, 4)), (1, 1, size / 4, size / 4), order=1)
    x = x + rng.normal(0, 20, x.shape) * (rng.random((n, 1, size, size)) < 0.5)
    q = size // 4
    x[:, :, :q, :q] = 255
    x[:, :, q:2 * q, -q:] = 0
    x[:, :, -q:, -q:] = rng.integers(0, 256, (n, 3, 1, 1))
    x[0] = x[0, :1]
    return torch.from_numpy(np.clip(x, 0, 255).round().astype(np.uint8))


X = make_images()


def smooth_images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour images (a cubic interpolation of 6x6 random colours, mild noise): per-pixel
    texture would alias under pixelate and make its severities non-monotone."""
    rng = np.random.default_rng(seed)
    x = nd.zoom(rng.uniform(0, 255, (n, 3, 6, 6)), (1, 1, size / 6, size / 6), order=3)
    x = x + rng.normal(0, 4, x.shape)
    return torch.from_numpy(np.clip(x, 0, 255).round().astype(np.uint8))


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = load_digits().images[:16]  # 8x8, 0..16, as ls_bench.data scales them
    return torch.from_numpy(np.rint(d * (255 / 16)).astype(np.uint8)).unsqueeze(1)


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def to_bytes(y: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(y, 0, 1) * 255)  # the reference's final conversion


def assert_close(mine: torch.Tensor, ref: np.ndarray, exact: float, max_diff: int = 1) -> None:
    """mine (uint8 [N, C, H, W]) vs ref (uint8 [N, H, W, C]): at least `exact` of the values equal,
    none further apart than max_diff grey levels."""
    d = hwc(mine).astype(int) - ref.astype(int)
    assert mine.dtype == torch.uint8 and d.shape == ref.shape
    assert np.abs(d).max() <= max_diff, f"max |diff| {np.abs(d).max()}"
    assert np.mean(d == 0) >= exact, f"only {np.mean(d == 0):.4f} of the values equal"


# --- per-image references of the deterministic corruptions ------------------------------------------


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_blur_is_skimage_gaussian(severity: int) -> None:
    sigma = [.4, .6, 0.7, .8, 1][severity - 1]
    # skimage.filters.gaussian(multichannel=True) = scipy's gaussian_filter, mode 'nearest', truncate 4
    ref = [to_bytes(nd.gaussian_filter(im / 255., sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0))
           for im in hwc(X)]
    assert_close(CORRUPTIONS["gaussian_blur"](X, severity, None), np.stack(ref), exact=0.9995)


def reference_disk(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c.py's disk(): an aliased disk / its sum (float32), then cv2.GaussianBlur 3x3:
    a float32 separable correlation with the normalised 3-tap Gaussian, border REFLECT_101."""
    L = np.arange(-8, 9)
    Xg, Yg = np.meshgrid(L, L)
    disk = ((Xg ** 2 + Yg ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-np.array([-1.0, 0.0, 1.0]) ** 2 / (2 * alias_blur ** 2))
    g = (g / g.sum()).astype(np.float32)
    return nd.correlate1d(nd.correlate1d(disk, g, axis=1, mode="mirror"), g, axis=0, mode="mirror")


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_defocus_blur_is_filter2d_with_the_reference_disk(severity: int) -> None:
    radius, blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    k = reference_disk(radius, blur)
    crop = C._disk(radius, blur)  # the module's kernel: the reference's, cropped to its support
    r = len(crop) // 2
    assert not k.any(0)[:8 - r].any() and not k.any(0)[9 + r:].any()
    np.testing.assert_allclose(crop, k[8 - r:9 + r, 8 - r:9 + r], rtol=1e-7, atol=1e-30)
    # cv2.filter2D(float64 image, -1, float32 kernel): correlation, BORDER_REFLECT_101 = scipy 'mirror'
    ref = [to_bytes(np.stack([nd.correlate(im[..., ch] / 255., k.astype(np.float64), mode="mirror")
                              for ch in range(3)], -1)) for im in hwc(X)]
    assert_close(CORRUPTIONS["defocus_blur"](X, severity, None), np.stack(ref), exact=0.9995)


def reference_zoom_blur(img: np.ndarray, severity: int) -> np.ndarray:
    c = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1], 0.01)
    x = (img / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for z in c:  # clipped_zoom
        h = x.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        zoomed = nd.zoom(x[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (zoomed.shape[0] - h) // 2
        out += zoomed[trim:trim + h, trim:trim + h]
    return to_bytes((x + out) / (len(c) + 1))


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_zoom_blur_is_the_reference_clipped_zoom_average(severity: int) -> None:
    ref = np.stack([reference_zoom_blur(im, severity) for im in hwc(X)])
    # The reference sums 7-26 zoomed float32 images one by one, the module in float64: the same
    # bytes but where a value lands within float32 rounding of a grey level.
    assert_close(CORRUPTIONS["zoom_blur"](X, severity, None), ref, exact=0.999)
    assert len(C.ZOOMS[0]) == 7  # np.arange(1, 1.06, 0.01) includes 1.06: the reference's 7 zooms


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_contrast_is_scaling_around_the_channel_mean(severity: int) -> None:
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = hwc(X) / 255.
    means = x.mean(axis=(1, 2), keepdims=True)
    assert_close(CORRUPTIONS["contrast"](X, severity, None), to_bytes((x - means) * c + means), exact=0.9995)


def colorsys_map(img: np.ndarray, fn) -> np.ndarray:
    """Per pixel: rgb -> hsv -> fn(h, s, v) -> rgb with colorsys (float64), as reference bytes."""
    out = np.empty(img.shape)
    for idx in np.ndindex(img.shape[:2]):
        h, s, v = fn(*colorsys.rgb_to_hsv(*(img[idx] / 255.)))
        out[idx] = colorsys.hsv_to_rgb(h, s, v)
    return to_bytes(out)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_brightness_and_saturate_match_colorsys(severity: int) -> None:
    c = [.05, .1, .15, .2, .3][severity - 1]
    scale, shift = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
    x = X[:3]  # the grey image and two colour ones
    bright = [colorsys_map(im, lambda h, s, v: (h, s, np.clip(v + c, 0, 1))) for im in hwc(x)]
    sat = [colorsys_map(im, lambda h, s, v: (h, np.clip(s * scale + shift, 0, 1), v)) for im in hwc(x)]
    # colorsys orders the hue arithmetic differently from skimage: a last-bit difference can
    # move a truncation by one grey level.
    assert_close(CORRUPTIONS["brightness"](x, severity, None), np.stack(bright), exact=0.99)
    assert_close(CORRUPTIONS["saturate"](x, severity, None), np.stack(sat), exact=0.99)


def test_hsv_round_trip_and_ties() -> None:
    x = C.to_float(X)
    hsv = C.rgb_to_hsv(x)
    assert all((c >= 0).all() and (c <= 1).all() for c in hsv)
    torch.testing.assert_close(C.hsv_to_rgb(*hsv), x, rtol=0, atol=1e-12)
    pixels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.2, 0.2, 0.2]], dtype=torch.float64)
    got = torch.stack(C.rgb_to_hsv(pixels.T.reshape(1, 3, 1, 4)), -1).reshape(4, 3)
    want = torch.tensor([colorsys.rgb_to_hsv(*p) for p in pixels.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want)  # yellow, cyan, magenta: two channels tie for the max


def pil_each(x: torch.Tensor, fn) -> np.ndarray:
    """fn over the images of x as PIL images ('L' or 'RGB'), back as [N, H, W, C] uint8."""
    grey = x.shape[1] == 1
    arrays = hwc(x)[..., 0] if grey else hwc(x)
    out = np.stack([np.asarray(fn(Image.fromarray(a))) for a in arrays])
    return out[..., None] if grey else out


@pytest.mark.parametrize("images", [X, digits()], ids=["rgb32", "grey8"])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_is_pil_box_resize_exactly(images: torch.Tensor, severity: int) -> None:
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    H = images.shape[-1]
    ref = pil_each(images, lambda im: im.resize((int(H * c),) * 2, Image.BOX).resize((H, H), Image.BOX))
    assert_close(CORRUPTIONS["pixelate"](images, severity, None), ref, exact=1.0, max_diff=0)


@pytest.mark.parametrize("size_in,size_out", [((32, 32), (30, 30)), ((32, 32), (20, 20)), ((20, 20), (32, 32)),
                                              ((8, 8), (5, 5)), ((17, 23), (7, 9)), ((7, 9), (17, 23)),
                                              ((32, 24), (13, 29))])
def test_resize_box_matches_pil_for_any_sizes(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, *size_in), dtype=np.uint8))
    ref = pil_each(x, lambda im: im.resize(size_out[::-1], Image.BOX))
    assert_close(C.resize_box(x, *size_out), ref, exact=1.0, max_diff=0)


@pytest.mark.parametrize("images", [X, digits()], ids=["rgb32", "grey8"])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_jpeg_compression_matches_pil(images: torch.Tensor, severity: int) -> None:
    quality = [80, 65, 58, 50, 40][severity - 1]

    def save_and_load(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(buf)

    # Both are libjpeg(-turbo) with default settings; identical here, a tolerance for other builds.
    assert_close(CORRUPTIONS["jpeg_compression"](images, severity, None), pil_each(images, save_and_load),
                 exact=0.99, max_diff=8)


# --- the random corruptions' formulas, fed the same draws -------------------------------------------


def reference_glass_blur(img: np.ndarray, severity: int, offsets: np.ndarray) -> np.ndarray:
    """make_cifar_c.py's glass_blur loop verbatim (numpy views and all), offsets[i, :, h-2, w-2]
    standing in for np.random.randint(-1, 1, size=(2,))."""
    sigma, max_delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]

    def gaussian(a: np.ndarray) -> np.ndarray:
        return nd.gaussian_filter(a, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)

    x = np.uint8(gaussian(img / 255.) * 255)
    for i in range(iterations):
        for h in range(32 - max_delta, max_delta, -1):
            for w in range(32 - max_delta, max_delta, -1):
                dx, dy = offsets[i, :, h - 2, w - 2]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return to_bytes(gaussian(x / 255.))


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_glass_blur_is_the_reference_loop(severity: int) -> None:
    x = X[:4]
    iterations = C.GLASS[severity - 1][2]
    offsets = np.random.default_rng(severity).integers(-1, 1, (4, iterations, 2, 30, 30))
    ref = np.stack([reference_glass_blur(im, severity, offsets[i]) for i, im in enumerate(hwc(x))])
    assert_close(C.glass_core(x, torch.from_numpy(offsets), severity), ref, exact=0.999)


def reference_plasma(u: np.ndarray, decay: float, mapsize: int = 32) -> np.ndarray:
    """make_cifar_c.py's plasma_fractal, np.random.uniform(-w, w, shape) replaced by the next
    values of u scaled to [-w, w)."""
    a = np.empty((mapsize, mapsize))
    a[0, 0] = 0
    step, wibble, used = mapsize, 100.0, 0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        nonlocal used
        r = u[used:used + array.size].reshape(array.shape)
        used += array.size
        return array / 4 + wibble * (-wibble + 2 * wibble * r)

    while step >= 2:
        corner = a[0:mapsize:step, 0:mapsize:step]
        square = corner + np.roll(corner, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        a[step // 2:mapsize:step, step // 2:mapsize:step] = wibbledmean(square)
        dr = a[step // 2:mapsize:step, step // 2:mapsize:step]
        ul = a[0:mapsize:step, 0:mapsize:step]
        ltsum = dr + np.roll(dr, 1, axis=0) + (ul + np.roll(ul, -1, axis=1))
        a[0:mapsize:step, step // 2:mapsize:step] = wibbledmean(ltsum)
        ttsum = dr + np.roll(dr, 1, axis=1) + (ul + np.roll(ul, -1, axis=0))
        a[step // 2:mapsize:step, 0:mapsize:step] = wibbledmean(ttsum)
        step //= 2
        wibble /= decay
    assert used == u.size
    a -= a.min()
    return a / a.max()


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_fog_is_the_reference_plasma_fog(severity: int) -> None:
    c, decay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    u = np.random.default_rng(severity).random((len(X), 32 * 32 - 1))
    ref = []
    for im, ui in zip(hwc(X), u):
        x = im / 255.
        max_val = x.max()
        x += c * reference_plasma(ui, decay)[..., None]
        ref.append(to_bytes(x * max_val / (max_val + c)))
    assert_close(C.fog_core(X, torch.from_numpy(u), severity), np.stack(ref), exact=0.9995)


@pytest.mark.parametrize("mode,scipy_mode", [("nearest", "nearest"), ("reflect", "reflect"), ("mirror", "mirror")])
@pytest.mark.parametrize("size", [32, 8])
def test_gaussian_filter_is_scipys_for_every_border_mode(mode: str, scipy_mode: str, size: int) -> None:
    f = np.random.default_rng(size).uniform(-1, 1, (2, 3, size, size))
    for sigma, truncate in [(0.4, 4.0), (1.0, 4.0), (6.4, 3.0)]:  # 6.4: radius 19, wider than an 8x8 image
        mine = C._gaussian_filter(torch.from_numpy(f), sigma, truncate, mode).numpy()
        ref = nd.gaussian_filter(f, sigma=(0, 0, sigma, sigma), mode=scipy_mode, truncate=truncate)
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-12)


def test_map_coordinates_is_scipys_reflect_mode() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((2, 3, 32, 32)).astype(np.float32)
    rows, cols = rng.uniform(-4, 36, (2, 2, 32, 32))  # outside the image too
    rows[:, :8] = np.round(rows[:, :8])  # integer coordinates must come back exactly
    mine = C._map_coordinates(torch.from_numpy(img), torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
    ref = np.stack([np.stack([nd.map_coordinates(img[b, ch], [rows[b], cols[b]], order=1, mode="reflect")
                              for ch in range(3)]) for b in range(2)])
    np.testing.assert_array_equal(mine, ref)  # float64 inside, float32 out: scipy's bytes


def reference_warp(img: np.ndarray, M: np.ndarray) -> np.ndarray:
    """cv2.warpAffine(img [C, H, W] float32, M, INTER_LINEAR, BORDER_REFLECT_101) transcribed from
    OpenCV <= 4.10's imgwarp.cpp in numpy: the inverse map in fixed point, X = (round((A01 y + A02)
    * 1024) + 16 + round(A00 x * 1024)) >> 5 in 1/32 pixel; float32 weights (1 - fy)(1 - fx), ...
    from its table; the four neighbours read through np.pad 'reflect' (= REFLECT_101) and summed
    in its order."""
    D = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]  # cv2.invertAffineTransform
    A = np.array([[M[1, 1], -M[0, 1]], [-M[1, 0], M[0, 0]]]) / D
    A = np.hstack([A, -A @ M[:, 2:]])
    yy, xx = np.mgrid[0:img.shape[1], 0:img.shape[2]].astype(np.float64)
    X, Y = [np.floor((np.round((a[1] * yy + a[2]) * 1024) + 16 + np.round(a[0] * xx * 1024)) / 32).astype(int)
            for a in A]
    fx, fy = (X % 32).astype(np.float32) / 32, (Y % 32).astype(np.float32) / 32
    pad = 16
    p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    r, c = Y // 32 + pad, X // 32 + pad
    one = np.float32(1)
    return (p[:, r, c] * ((one - fy) * (one - fx)) + p[:, r, c + 1] * ((one - fy) * fx)
            + p[:, r + 1, c] * (fy * (one - fx)) + p[:, r + 1, c + 1] * (fy * fx))


def test_warp_affine_is_opencvs_fixed_point_warp() -> None:
    rng = np.random.default_rng(3)
    img = rng.random((4, 3, 32, 32)).astype(np.float32)
    shift = np.array([[[1, 0, 2], [0, 1, -3]]], dtype=np.float64)  # x + 2, y - 3: a pure shift
    mine = C._warp_affine(torch.from_numpy(img[:1]), torch.from_numpy(shift)).numpy()[0]
    rows = np.abs(np.arange(32) + 3)  # dst(x, y) = src(x - 2, y + 3), mirrored at the borders
    rows = np.where(rows > 31, 62 - rows, rows)
    cols = np.abs(np.arange(32) - 2)
    np.testing.assert_array_equal(mine, img[0][:, rows][:, :, cols])
    pts1 = C.affine_points(32, 32)
    pts2 = pts1 + torch.from_numpy(rng.uniform(-2.56, 2.56, (4, 3, 2))).float()
    M = C._affine_transform(pts1, pts2)  # cv2.getAffineTransform: maps pts1 onto pts2
    P = np.hstack([pts1.numpy(), np.ones((3, 1))])
    np.testing.assert_allclose(P @ M.numpy().transpose(0, 2, 1), pts2.numpy(), atol=1e-5)
    mine = C._warp_affine(torch.from_numpy(img), M).numpy()
    np.testing.assert_array_equal(mine, np.stack([reference_warp(img[b], M[b].numpy()) for b in range(4)]))


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_elastic_transform_is_the_reference_formula(severity: int) -> None:
    alpha, sigma, affine = [(0, 0, 2.56), (1.6, 6.4, 2.24), (2.56, 1.92, 1.92), (3.2, 1.28, 1.6),
                            (3.2, 0.96, 0.96)][severity - 1]  # 32 * the reference's fractions
    assert C.elastic_params(severity) == pytest.approx((alpha, sigma, affine))
    rng = np.random.default_rng(severity)
    jitter = rng.uniform(-affine, affine, (4, 3, 2)).astype(np.float32)
    fields = rng.uniform(-1, 1, (4, 2, 32, 32))
    x = X[:4]
    mine = C.to_uint8(C.elastic_core(C.to_float(x, torch.float32), torch.from_numpy(jitter),
                                     torch.from_numpy(fields), severity))
    pts1 = np.float32([[26, 26], [26, 6], [6, 6]])
    assert (C.affine_points(32, 32).numpy() == pts1).all()
    ref = []
    for b, im in enumerate(x.numpy()):
        P = np.hstack([pts1, np.ones((3, 1))]).astype(np.float64)
        M = np.linalg.solve(P, (pts1 + jitter[b]).astype(np.float64)).T  # cv2.getAffineTransform
        warped = reference_warp(im.astype(np.float32) / 255, M)
        d = [(nd.gaussian_filter(f, sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
             if sigma > 0 else np.zeros_like(f, dtype=np.float32) for f in fields[b]]
        yy, xx = np.mgrid[0:32, 0:32]
        ref.append(np.stack([to_bytes(nd.map_coordinates(ch, [yy + d[1], xx + d[0]], order=1, mode="reflect"))
                             for ch in warped], -1))
    assert_close(mine, np.stack(ref), exact=0.999)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_shot_noise_is_the_poisson_inverse_cdf(severity: int) -> None:
    c = [500, 250, 100, 75, 50][severity - 1]
    u = torch.rand(X.shape, generator=torch.Generator().manual_seed(severity), dtype=torch.float64)
    u[0, 0, 0, :4] = torch.tensor([0.0, 1e-300, 1 - 1e-12, 1 - 2 ** -53], dtype=torch.float64)  # the far tails
    k = poisson.ppf(u.numpy(), X.numpy() / 255. * c)
    np.testing.assert_array_equal(C.shot_core(X, u, severity).numpy(), to_bytes(k / c))


# --- noise statistics on mid-grey images ------------------------------------------------------------

GREY = torch.full((100, 3, 32, 32), 128, dtype=torch.uint8)  # 307,200 values at 128/255


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_noise_statistics(severity: int) -> None:
    x = 128 / 255
    # Truncation to uint8 subtracts ~0.5/255 on average and adds 1/12 grey level^2 of variance.
    quantisation = 1 / 12 / 255 ** 2

    def diff(name: str) -> np.ndarray:
        return (corrupt(GREY, name, severity, seed=0).double().numpy() - 128) / 255

    sigma = [0.04, 0.06, .08, .09, .10][severity - 1]
    d = diff("gaussian_noise")
    assert d.std() == pytest.approx(np.sqrt(sigma ** 2 + quantisation), rel=0.01)
    assert d.mean() == pytest.approx(-0.5 / 255, abs=5 * sigma / np.sqrt(d.size))
    c = [500, 250, 100, 75, 50][severity - 1]
    assert diff("shot_noise").var() == pytest.approx(x / c + quantisation, rel=0.015)  # Var Poisson(xc)/c = x/c
    sigma = [.06, .1, .12, .16, .2][severity - 1]
    assert diff("speckle_noise").std() == pytest.approx(np.sqrt((x * sigma) ** 2 + quantisation), rel=0.01)
    amount = [.01, .02, .03, .05, .07][severity - 1]
    out = corrupt(GREY, "impulse_noise", severity, seed=0)
    n = out.numel()
    for level in (0, 255):  # salt and pepper, each amount / 2, per value
        frac = (out == level).sum().item() / n
        assert abs(frac - amount / 2) < 4 * np.sqrt(amount / 2 / n)
    assert ((out == 0) | (out == 255) | (out == 128)).all()


# --- seeding, batching, registry, shapes ------------------------------------------------------------


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_seeded_and_independent_of_the_batch_size(name: str) -> None:
    x = X[:6]
    a = corrupt(x, name, 3, seed=1, batch_size=1000)
    assert torch.equal(a, corrupt(x, name, 3, seed=1, batch_size=4))
    assert torch.equal(a, corrupt(x, name, 3, seed=1, batch_size=1))
    if name in RANDOM:
        assert not torch.equal(a, corrupt(x, name, 3, seed=2))
        assert not torch.equal(a, corrupt(x, name, 4, seed=1))  # its own stream per severity
        # one stream runs through the split in order: without image 0 the others get other draws
        assert not torch.equal(a[1:], corrupt(x[1:], name, 3, seed=1))


def test_generator_is_seeded_from_sha256_of_seed_name_severity() -> None:
    digest = hashlib.sha256(b"7/gaussian_noise/2").digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    assert torch.equal(corrupt(X, "gaussian_noise", 2, seed=7), CORRUPTIONS["gaussian_noise"](X, 2, g))


MONOTONE = [n for n in CORRUPTION_NAMES if n not in ("saturate", "glass_blur", "elastic_transform")]


@pytest.mark.parametrize("name", MONOTONE)
def test_distance_to_the_clean_image_grows_with_severity(name: str) -> None:
    x = smooth_images()
    d = [(corrupt(x, name, s, seed=0).float() - x.float()).abs().mean().item() for s in range(1, 6)]
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_the_non_monotone_ones_grow_in_their_own_parameter() -> None:
    # saturate: S * 0.3, S * 0.1, then S * 1.5, S * 2 + 0.1, S * 2.5 + 0.2
    sat = [C.rgb_to_hsv(C.to_float(corrupt(X[1:], "saturate", s, 0)))[1].mean().item() for s in range(1, 6)]
    clean = C.rgb_to_hsv(C.to_float(X[1:]))[1].mean().item()
    assert sat[1] < sat[0] < clean < sat[2] < sat[3] < sat[4]

    def dist(y: torch.Tensor) -> float:
        return (y.float() - X.float()).abs().mean().item()

    # glass_blur: sigma grows over 1-3 (one pass) and 4-5 (two passes); a second pass adds distance
    glass = [dist(corrupt(X, "glass_blur", s, 0)) for s in range(1, 6)]
    no_shuffle = [dist(C.glass_core(X, torch.zeros(len(X), C.GLASS[s - 1][2], 2, 30, 30, dtype=torch.long), s))
                  for s in range(1, 4)]
    assert no_shuffle[0] < no_shuffle[1] < no_shuffle[2] and glass[3] > glass[1] and glass[4] > glass[2]
    # elastic_transform: the elastic displacement grows with severity, the affine jitter shrinks
    g = torch.Generator().manual_seed(0)
    fields = 2 * torch.rand(len(X), 2, 32, 32, generator=g, dtype=torch.float64) - 1
    unit = 2 * torch.rand(len(X), 3, 2, generator=g) - 1
    xf = C.to_float(X, torch.float32)
    elastic = [dist(C.to_uint8(C.elastic_core(xf, 0 * unit, fields, s))) for s in range(2, 6)]
    affine = [dist(C.to_uint8(C.elastic_core(xf, unit * C.elastic_params(s)[2], 0 * fields, s))) for s in range(1, 6)]
    assert all(a < b for a, b in zip(elastic, elastic[1:])) and all(a > b for a, b in zip(affine, affine[1:]))


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_shape_dtype_and_grey_8x8_images(name: str) -> None:
    for x in (X, digits()):
        out = corrupt(x, name, 5, seed=0)
        assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
        strided = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last memory
        assert torch.equal(corrupt(strided, name, 5, seed=0), out)
    grey = digits()
    if name == "saturate":
        assert torch.equal(corrupt(grey, name, 5, 0), grey)
    if name == "brightness":  # what the reference gives for an RGB image with R = G = B
        assert torch.equal(corrupt(grey, name, 5, 0), corrupt(grey.expand(-1, 3, -1, -1), name, 5, 0)[:, :1])
    if name in ("contrast", "gaussian_blur", "defocus_blur", "zoom_blur"):  # per channel, like RGB
        assert torch.equal(corrupt(grey, name, 3, 0), corrupt(grey.expand(-1, 3, -1, -1), name, 3, 0)[:, :1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_cuda_gives_the_cpu_result(name: str) -> None:
    out = corrupt(X.cuda(), name, 3, seed=0)
    assert out.is_cuda and (out.cpu().int() - corrupt(X, name, 3, seed=0).int()).abs().max() <= 1


def test_registry_names_follow_cifar10c() -> None:
    cifar10c = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert list(CORRUPTION_NAMES) == [n for n in cifar10c if n not in C.MISSING]
    assert set(CORRUPTION_NAMES) | set(C.MISSING) == set(cifar10c)
    for name in C.MISSING:
        assert name in C.__doc__


def test_resolve_and_check_corruptions() -> None:
    assert resolve_corruptions(["all"]) == list(CORRUPTION_NAMES)
    assert resolve_corruptions("all") == list(CORRUPTION_NAMES)
    assert resolve_corruptions(["fog", "contrast", "fog"]) == ["fog", "contrast"]
    check_corruptions(["all"], [1, 2, 3, 4, 5])
    for names, severities, key, value in [(["fog", "fogg"], [1], "eval.corruptions", "'fogg'"),
                                          (["motion_blur"], [1], "eval.corruptions", "'motion_blur'"),
                                          (["fog"], [0], "eval.severities", "0"),
                                          (["fog"], [1, 6], "eval.severities", "6"),
                                          (["fog"], [2.5], "eval.severities", "2.5"),
                                          (["fog"], [True], "eval.severities", "True")]:
        with pytest.raises(ConfigError) as err:
            check_corruptions(names, severities)
        message = str(err.value)
        assert message.startswith(f"{key}={value} is invalid") and "\n" not in message
    with pytest.raises(ConfigError, match="not implemented"):
        check_corruptions(["snow"], [1])
    with pytest.raises(ConfigError, match="eval.corruptions='all'"):
        corrupt(X, "all", 1, seed=0)
    with pytest.raises(ConfigError, match="eval.severities=6"):
        corrupt(X, "fog", 6, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(X.float(), "fog", 1, seed=0)
    assert corrupt(X[:0], "fog", 1, seed=0).shape == (0, 3, 32, 32)
