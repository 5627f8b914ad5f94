"""Pure image kernels shared by the built-in plugins.

Convention at every function boundary: ``img`` is float32 RGB ``(H, W, 3)`` in ``[0, 1]``
and the result is the same (a new array; inputs are never modified). Randomness comes only
from the ``rng`` argument. No function here decides a parameter: plugins sample, kernels apply.
"""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np

_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
           "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
INTERPOLATIONS: tuple[str, ...] = tuple(_INTERP)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def clip01(img: np.ndarray) -> np.ndarray:
    """Clip in place to [0, 1] and return float32 C-contiguous.

    Two in-place OpenCV thresholds (min with 1, then max with 0) where OpenCV takes the array: the same values
    as ``np.clip`` (-0.0 comes out as +0.0) in about half its time on a 512² RGB image.
    """
    img = np.ascontiguousarray(img, dtype=np.float32)
    if img.ndim > 3 or img.size == 0 or (img.ndim == 3 and img.shape[2] > 4):
        return np.clip(img, 0.0, 1.0, out=img)
    cv2.threshold(img, 1.0, 1.0, cv2.THRESH_TRUNC, dst=img)
    return cv2.threshold(img, 0.0, 0.0, cv2.THRESH_TOZERO, dst=img)[1]


def luminance(img: np.ndarray) -> np.ndarray:
    """(H, W) float32 Rec.601 luma."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def gray3(gray: np.ndarray) -> np.ndarray:
    """Replicate an (H, W) map to (H, W, 3) float32 (dense maps keep the RGB convention)."""
    return cv2.cvtColor(np.ascontiguousarray(gray, dtype=np.float32), cv2.COLOR_GRAY2RGB)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return cv2.convertScaleAbs(img, alpha=255.0)  # rounds and saturates in one pass


def from_uint8(arr: np.ndarray) -> np.ndarray:
    return np.multiply(arr, np.float32(1 / 255), dtype=np.float32)


# -- noise -------------------------------------------------------------------------------------------
@cache
def _normal_table() -> np.ndarray:
    """Midpoint quantiles ``ndtri((i + 0.5) / 65536)`` of N(0, 1), rescaled to exact unit variance."""
    from scipy.special import ndtri

    table = ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536)
    return (table / np.sqrt(np.mean(table * table))).astype(np.float32)


@cache
def _lut16() -> bool:
    """Whether ``cv2.LUT`` takes 16-bit indices into a 65,536-entry table (OpenCV >= 5)."""
    try:
        return cv2.LUT(np.zeros((1, 1), np.uint16), _normal_table()).shape == (1, 1)
    except cv2.error:
        return False


def random_key(rng: np.random.Generator) -> np.uint64:
    """One 64-bit word of ``rng``: the key of a SplitMix64 stream (:mod:`degradations.jit`)."""
    return np.uint64(rng.bit_generator.random_raw())


def random_u16(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform uint16 draws: four per 64-bit word of a SplitMix64 stream keyed by one word of ``rng``.

    The stream depends only on ``rng`` (one word drawn), and is about three times faster than ``rng``'s own
    bit generator, whose raw words cost a function call each.
    """
    from degradations import jit

    return jit.splitmix_words(random_key(rng), (n + 3) // 4).view(np.uint16)[:n]


def standard_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard-normal float32 samples by inverse-CDF look-up of uniform 16-bit draws.

    An approximation, ~5x faster than ``rng.standard_normal``: the 65,536 midpoint quantiles of N(0, 1)
    (rescaled to unit variance), so values are quantized to 65,536 levels (steps < 0.0001 sigma near the mean)
    and the tails stop at +-4.3 sigma. Mean, variance, skewness, kurtosis and a two-sample KS test match exact
    normals on a 1024² RGB draw (tests/degradations/test_kernels.py); what differs is the far tail: exact normals
    put about 48 of a 1024² RGB image's 3.1M values beyond 4.3 sigma, this table none.
    """
    return normal(shape, rng)


def normal(shape: tuple[int, ...], rng: np.random.Generator, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """N(loc, scale^2) float32 samples: ``loc + scale * z``, ``z`` as in ``standard_normal`` (the same bits).

    The affine map is applied to the 65,536-entry table, not to every sample.
    """
    table = _normal_table()
    if scale != 1.0:
        table = table * np.float32(scale)
    if loc != 0.0:
        table = table + np.float32(loc)
    idx = random_u16(math.prod(shape), rng).reshape(shape[0] if len(shape) > 1 else 1, -1)
    if _lut16():
        return cv2.LUT(idx, table).reshape(shape)
    # OpenCV < 5: the same bits; mode="wrap" skips a bounds check that halves np.take's speed.
    return np.take(table, idx, mode="wrap").reshape(shape)


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """``img + N(0, sigma^2)``; one noise value for all channels when ``gray``. Normals: see ``standard_normal``."""
    h, w, _ = img.shape
    if gray:
        out = gray3(normal((h, w), rng, scale=sigma))
        cv2.add(out, img, dst=out)  # in place: no temporaries
        return clip01(out)
    from degradations import jit

    # The same values as clip01(img + normal(img.shape, rng, scale=sigma)), in one pass.
    src = np.ascontiguousarray(img, dtype=np.float32)
    out = np.empty_like(src)
    jit.add_table_noise_clip(src.reshape(-1), out.reshape(-1), _normal_table() * np.float32(sigma), random_key(rng))
    return out


#: Below this many expected photons a pixel draws exact Poisson counts; above, the normal approximation
#: N(lam, lam), rounded to whole counts (skewness 1/sqrt(lam) < 0.23, rounding adds < 0.5% variance).
POISSON_EXACT_BELOW = 20.0


def poisson_counts(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson(lam) counts as float32: exact where lam is small, rounded-normal elsewhere (~6x faster)."""
    lam = np.ascontiguousarray(lam, dtype=np.float32)
    counts = cv2.scaleAdd(cv2.multiply(cv2.sqrt(lam), standard_normal(lam.shape, rng)), 1.0, lam)
    np.rint(counts, out=counts)
    dark = lam < POISSON_EXACT_BELOW
    if dark.any():
        counts[dark] = rng.poisson(lam[dark].astype(np.float64))
    return np.maximum(counts, 0.0, out=counts)


def add_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Shot noise of an 8-bit sensor (photon counts = 255 * intensity), its deviation times ``scale``."""
    src = luminance(img) if gray else img
    noise = poisson_counts(src * np.float32(255.0), rng) * np.float32(1 / 255) - src
    return clip01(cv2.scaleAdd(gray3(noise) if gray else noise, float(scale), img))


def add_speckle_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise ``img * (1 + N(0, sigma^2))`` (coherent-imaging speckle)."""
    return clip01(img * (1.0 + np.float32(sigma) * standard_normal(img.shape, rng)))


def add_salt_pepper(img: np.ndarray, amount: float, salt_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Set a fraction ``amount`` of pixels to white (``salt_ratio`` of them) or black, each pixel independently.

    No per-pixel random field: a Poisson number of hits, mean ``-ln(1 - amount)`` per pixel, lands on uniform
    positions with repeats, so each pixel's hit count is Poisson and independent of the others' (Poisson
    splitting): it is hit with probability exactly ``1 - exp(ln(1 - amount)) = amount``. Each hit is salt with
    probability ``salt_ratio``; a pixel hit twice keeps one of its values, salt with that same probability.
    """
    h, w, c = img.shape
    k = int(rng.poisson(-h * w * np.log1p(-amount)))
    pos = rng.integers(0, h * w, k)
    value = (rng.random(k) < salt_ratio).astype(np.float32)
    out = img.copy()
    out.reshape(h * w, c)[pos] = value[:, None]
    return out


def add_iso_noise(img: np.ndarray, intensity: float, color_shift: float, rng: np.random.Generator) -> np.ndarray:
    """Camera sensor noise: luminance noise growing with brightness plus low-frequency chroma blotches."""
    h, w, _ = img.shape
    lum = normal((h, w), rng, scale=intensity)
    lum *= np.sqrt(luminance(img) + 0.02)
    ch, cw = max(1, h // 2), max(1, w // 2)
    chroma = cv2.resize(normal((ch, cw, 3), rng, scale=color_shift), (w, h), interpolation=cv2.INTER_LINEAR)
    cv2.add(chroma, img, dst=chroma)
    cv2.add(chroma, gray3(lum), dst=chroma)
    return clip01(chroma)


# -- lens and light ------------------------------------------------------------------------------------
def liquid_layer(h: int, w: int, mean: float, std: float, sigma: float, cutout: float,
                 rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 liquid thickness for lens spatter (albumentations ``Spatter``'s layer, in float32).

    ``N(mean, std^2)`` per pixel, Gaussian-blurred by ``sigma`` (replicated border), zero below ``cutout``.
    """
    layer = normal((h, w), rng, loc=mean, scale=std)
    k = int(2 * round(3 * sigma) + 1)
    cv2.GaussianBlur(layer, (k, k), sigma, dst=layer, borderType=cv2.BORDER_REPLICATE)
    return cv2.threshold(layer, cutout, 0.0, cv2.THRESH_TOZERO, dst=layer)[1]


def random_polygons(h: int, w: int, count: int, vertices: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` (vertices, 2) int32 polygons of uniform random pixel (x, y) vertices."""
    return [np.column_stack([rng.integers(0, w, vertices), rng.integers(0, h, vertices)]).astype(np.int32)
            for _ in range(count)]


def cast_shadows(img: np.ndarray, polygons: list[np.ndarray], intensity: float) -> np.ndarray:
    """Multiply by ``1 - intensity`` inside each polygon (``cv2.fillPoly`` rule); overlaps compound."""
    h, w = img.shape[:2]
    gain = np.ones((h, w), np.float32)
    for poly in polygons:
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, [poly], 1)
        np.multiply(gain, np.float32(1.0 - intensity), out=gain, where=inside.view(bool))
    return cv2.multiply(img, gray3(gain))  # gain <= 1: stays in [0, 1]


# -- blur kernels (Real-ESRGAN family) -----------------------------------------------------------------
def _grid(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(ksize, dtype=np.float64) - ksize // 2
    return np.meshgrid(r, r)


def _quadratic_form(ksize: int, sx: float, sy: float, rotation: float) -> np.ndarray:
    """``d = [x y] S^-1 [x y]^T`` for a rotated covariance with std ``sx``, ``sy``."""
    xx, yy = _grid(ksize)
    c, s = np.cos(rotation), np.sin(rotation)
    u, v = c * xx + s * yy, -s * xx + c * yy
    return (u / sx) ** 2 + (v / sy) ** 2


def gaussian_kernel(ksize: int, sx: float, sy: float, rotation: float = 0.0) -> np.ndarray:
    k = np.exp(-0.5 * _quadratic_form(ksize, sx, sy, rotation))
    return (k / k.sum()).astype(np.float32)


def generalized_gaussian_kernel(ksize: int, sigma: float, beta: float) -> np.ndarray:
    """``exp(-0.5 * d^beta)``: beta < 1 peaky, beta > 1 flat-topped (Real-ESRGAN)."""
    k = np.exp(-0.5 * _quadratic_form(ksize, sigma, sigma, 0.0) ** beta)
    return (k / k.sum()).astype(np.float32)


def plateau_kernel(ksize: int, sigma: float, beta: float) -> np.ndarray:
    """``1 / (1 + d^beta)``: a plateau-shaped kernel (Real-ESRGAN)."""
    k = 1.0 / (1.0 + _quadratic_form(ksize, sigma, sigma, 0.0) ** beta)
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(ksize: int, cutoff: float) -> np.ndarray:
    """2-D circular low-pass (jinc) kernel with angular cutoff in radians/pixel: produces ringing."""
    from scipy.special import j1

    xx, yy = _grid(ksize)
    r = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1(cutoff * r) / (2 * np.pi * r)
    k[ksize // 2, ksize // 2] = cutoff**2 / (4 * np.pi)
    return (k / k.sum()).astype(np.float32)


def motion_kernel(ksize: int, angle_deg: float) -> np.ndarray:
    """A straight line of length ``ksize`` through the centre at ``angle_deg``."""
    k = np.zeros((ksize, ksize), np.float32)
    c = ksize // 2
    dx, dy = np.cos(np.deg2rad(angle_deg)) * c, np.sin(np.deg2rad(angle_deg)) * c
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    return k / k.sum()


def disk_kernel(radius: float) -> np.ndarray:
    """A uniform anti-aliased disk (out-of-focus lens point-spread function)."""
    r = int(np.ceil(radius))
    xx, yy = _grid(2 * r + 1)
    k = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return (k / k.sum()).astype(np.float32)


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate with a 2-D kernel (reflect border), clipped: ringing kernels overshoot.

    Large sparse kernels (motion-blur lines) are summed tap by tap, which beats OpenCV's DFT path for
    them; dense kernels go through ``cv2.filter2D``.
    """
    taps = np.argwhere(kernel != 0)
    if kernel.size >= 121 and len(taps) <= 48:
        return clip01(_sparse_correlate(img, kernel, taps))
    return clip01(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101))


def _sparse_correlate(img: np.ndarray, kernel: np.ndarray, taps: np.ndarray) -> np.ndarray:
    kh, kw = kernel.shape
    cy, cx = kh // 2, kw // 2
    h, w = img.shape[:2]
    pad = cv2.copyMakeBorder(img, cy, kh - 1 - cy, cx, kw - 1 - cx, cv2.BORDER_REFLECT_101)
    out = np.zeros_like(img)
    for y, x in taps:  # fixed order: bit-reproducible
        out += np.float32(kernel[y, x]) * pad[y:y + h, x:x + w]
    return out


def gaussian_blur(img: np.ndarray, sigma: float, ksize: int) -> np.ndarray:
    out = cv2.GaussianBlur(img, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT_101)
    # Non-negative weights keep it >= 0; only float rounding of the weights' sum can pass 1 (one pass, not two).
    return cv2.threshold(out, 1.0, 1.0, cv2.THRESH_TRUNC, dst=out)[1]


# -- compression and resampling ---------------------------------------------------------------------------
def encode_decode(img: np.ndarray, ext: str, quality: int) -> np.ndarray:
    """Round-trip through a lossy codec (``.jpg`` or ``.webp``) at ``quality`` 1-100."""
    flag = cv2.IMWRITE_JPEG_QUALITY if ext == ".jpg" else cv2.IMWRITE_WEBP_QUALITY
    bgr = cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2BGR)  # codecs expect BGR: chroma is defined on it
    ok, buf = cv2.imencode(ext, bgr, [int(flag), int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext} at quality {quality}")
    return from_uint8(cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB))


def resize(img: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    if (height, width) == img.shape[:2]:
        return img.copy()
    out = cv2.resize(img, (int(width), int(height)), interpolation=_INTERP[interpolation])
    # Only the cubic and Lanczos kernels have negative lobes that overshoot [0, 1].
    return clip01(out) if interpolation in ("bicubic", "lanczos") else out


def scaled_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def pixelate(img: np.ndarray, block: int) -> np.ndarray:
    """Average ``block`` x ``block`` cells, then blow them back up with nearest neighbour."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def quantize(img: np.ndarray, levels: int) -> np.ndarray:
    """Uniform quantization to ``levels`` values per channel."""
    n = np.float32(levels - 1)
    return np.floor(img * n + 0.5) / n


# -- tone and colour -----------------------------------------------------------------------------------------------
def gamma(img: np.ndarray, g: float) -> np.ndarray:
    return np.power(img, np.float32(g), dtype=np.float32)


def gain(img: np.ndarray, factor: float) -> np.ndarray:
    return clip01(img * np.float32(factor))


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Scale deviations from the mean luminance by ``factor`` (< 1 flattens)."""
    mean = float(luminance(img).mean())
    return clip01((img - mean) * np.float32(factor) + np.float32(mean))


def saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the luminance image: 0 is grey, 1 unchanged."""
    lum = gray3(luminance(img))  # (H, W, 3) contiguous: numpy broadcasting over a last axis of 1 is slow
    return clip01(cv2.addWeighted(img, float(factor), lum, 1.0 - float(factor), 0.0))


def channel_gains(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return clip01(cv2.multiply(img, (*map(float, gains), 0.0)))  # per-channel scalar: no numpy broadcasting


def vignette(img: np.ndarray, strength: float, radius: float) -> np.ndarray:
    """Darken towards the corners: gain ``1 - strength * smoothstep(r / radius)``."""
    h, w = img.shape[:2]
    yy, xx = np.ogrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    r = np.sqrt(xx.astype(np.float32) ** 2 + yy.astype(np.float32) ** 2) / np.float32(np.sqrt(2) * radius)
    t = np.clip(r, 0, 1)
    mask = 1.0 - np.float32(strength) * t * t * (3 - 2 * t)
    return clip01(cv2.multiply(img, gray3(mask)))


def tone_compress(img: np.ndarray, strength: float) -> np.ndarray:
    """A flat, log-profile-like rendering: Reinhard-compressed luminance pulled towards mid-grey, muted chroma."""
    lum = luminance(img)
    k = np.float32(0.05 + 2.0 * strength)
    mapped = lum * (1 + k) / (lum + k)  # Reinhard curve through (0, 0) and (1, 1): lifts shadows
    flat = np.float32(0.5) + (mapped - np.float32(0.5)) * np.float32(1 - 0.5 * strength)
    c = 1.0 - 0.5 * float(strength)  # chroma kept: out = flat + c * (img - lum)
    return clip01(cv2.addWeighted(img, c, gray3(flat - np.float32(c) * lum), 1.0, 0.0))
