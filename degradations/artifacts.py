"""Restoration plugins for capture and editing artefacts: inpainting masks, Bayer mosaic, moire, banding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from degradations import kernels
from degradations.base import Degradation, allowed, draw_float, draw_int, limits

_FILL = {"black": 0.0, "white": 1.0, "grey": 0.5}


def _point(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    return int(rng.integers(0, w)), int(rng.integers(0, h))


def line_mask(h: int, w: int, count: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Straight scratches across the image, ``width`` as a fraction of the short side."""
    mask = np.zeros((h, w), np.uint8)
    thick = max(1, round(width * min(h, w)))
    for _ in range(count):
        cv2.line(mask, _point(rng, h, w), _point(rng, h, w), 255, thick)
    return mask


def box_mask(h: int, w: int, count: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Axis-aligned holes whose sides are up to ``size`` of the image sides."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(count):
        bh = max(1, round(h * size * (0.5 + 0.5 * rng.random())))
        bw = max(1, round(w * size * (0.5 + 0.5 * rng.random())))
        y, x = int(rng.integers(0, max(1, h - bh + 1))), int(rng.integers(0, max(1, w - bw + 1)))
        mask[y:y + bh, x:x + bw] = 255
    return mask


def freeform_mask(h: int, w: int, strokes: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Brush strokes as random walks (DeepFill v2 style): joined segments with round caps."""
    mask = np.zeros((h, w), np.uint8)
    thick = max(2, round(width * min(h, w)))
    step = max(4, min(h, w) // 8)
    for _ in range(strokes):
        x, y = _point(rng, h, w)
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(4, 10))):
            angle += rng.uniform(-0.8, 0.8)
            nx = int(np.clip(x + step * np.cos(angle), 0, w - 1))
            ny = int(np.clip(y + step * np.sin(angle), 0, h - 1))
            cv2.line(mask, (x, y), (nx, ny), 255, thick)
            cv2.circle(mask, (nx, ny), thick // 2, 255, -1)
            x, y = nx, ny
    return mask


def fill_mask(img: np.ndarray, mask: np.ndarray, value: float) -> np.ndarray:
    out = img.copy()
    out[mask > 0] = np.float32(value)
    return out


@dataclass(frozen=True, kw_only=True)
class InpaintLines(Degradation):
    """Inpainting: straight scratches of missing pixels."""

    domain = "restoration"
    instructions = ("Fill in the missing lines of this image.", "Remove the scratches and restore what is behind.",
                    "Inpaint the {count} {fill} lines drawn over this photo.")
    count_range: tuple[int, int] = limits(1, 40, (3, 12))
    width_range: tuple[float, float] = limits(0.001, 0.1, (0.005, 0.02))
    fill_choices: tuple[str, ...] = allowed(tuple(_FILL), ("black", "white"))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"count": draw_int(rng, self.count_range), "width": draw_float(rng, self.width_range),
                "fill": str(rng.choice(self.fill_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, count: int, width: float, fill: str) -> np.ndarray:
        h, w = img.shape[:2]
        return fill_mask(img, line_mask(h, w, count, width, rng), _FILL[fill])


@dataclass(frozen=True, kw_only=True)
class InpaintBoxes(Degradation):
    """Inpainting: rectangular holes."""

    domain = "restoration"
    instructions = ("Fill in the missing regions of this image.", "Inpaint the rectangular holes.",
                    "Complete the {count} {fill} boxes cut out of this photo.")
    count_range: tuple[int, int] = limits(1, 10, (1, 4))
    size_range: tuple[float, float] = limits(0.02, 0.6, (0.1, 0.3))
    fill_choices: tuple[str, ...] = allowed(tuple(_FILL), ("black", "white", "grey"))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"count": draw_int(rng, self.count_range), "size": draw_float(rng, self.size_range),
                "fill": str(rng.choice(self.fill_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, count: int, size: float, fill: str) -> np.ndarray:
        h, w = img.shape[:2]
        return fill_mask(img, box_mask(h, w, count, size, rng), _FILL[fill])


@dataclass(frozen=True, kw_only=True)
class InpaintFreeform(Degradation):
    """Inpainting: free-form brush-stroke holes."""

    domain = "restoration"
    instructions = ("Fill in the painted-over regions of this image.", "Inpaint the missing strokes.",
                    "Restore the {strokes} {fill} brush strokes masking this photo.")
    strokes_range: tuple[int, int] = limits(1, 12, (1, 5))
    width_range: tuple[float, float] = limits(0.005, 0.15, (0.02, 0.06))
    fill_choices: tuple[str, ...] = allowed(tuple(_FILL), ("black", "white"))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"strokes": draw_int(rng, self.strokes_range), "width": draw_float(rng, self.width_range),
                "fill": str(rng.choice(self.fill_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, strokes: int, width: float,
              fill: str) -> np.ndarray:
        h, w = img.shape[:2]
        return fill_mask(img, freeform_mask(h, w, strokes, width, rng), _FILL[fill])


#: Position of R and B in the 2x2 Bayer tile for each pattern: (row, col).
_BAYER = {"RGGB": ((0, 0), (1, 1)), "BGGR": ((1, 1), (0, 0)), "GRBG": ((0, 1), (1, 0)), "GBRG": ((1, 0), (0, 1))}


def bayer_demosaic(img: np.ndarray, pattern: str) -> np.ndarray:
    """Sample ``img`` through a Bayer colour-filter array, then demosaic it back by bilinear interpolation."""
    h, w = img.shape[:2]
    masks = np.zeros((h, w, 3), np.float32)
    (ry, rx), (by, bx) = _BAYER[pattern]
    masks[ry::2, rx::2, 0] = 1
    masks[by::2, bx::2, 2] = 1
    masks[..., 1] = 1 - masks[..., 0] - masks[..., 2]
    mosaic = img * masks
    rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4
    g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
    out = np.empty_like(img)
    for c, k in ((0, rb), (1, g), (2, rb)):
        # Normalised convolution: exact at the image border, where a plain kernel would under-count neighbours.
        num = cv2.filter2D(mosaic[..., c], -1, k, borderType=cv2.BORDER_CONSTANT)
        den = cv2.filter2D(masks[..., c], -1, k, borderType=cv2.BORDER_CONSTANT)
        out[..., c] = num / np.maximum(den, 1e-6)
    return kernels.clip01(out)


@dataclass(frozen=True, kw_only=True)
class BayerMosaic(Degradation):
    """Demosaicing task: a Bayer CFA sample demosaiced naively (zipper edges, false colour)."""

    domain = "restoration"
    instructions = ("Demosaic this image properly.", "Remove the demosaicing artifacts (zippering, false colour).",
                    "Reconstruct full colour from this naively demosaiced {pattern} Bayer capture.")
    pattern_choices: tuple[str, ...] = allowed(tuple(_BAYER))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"pattern": str(rng.choice(self.pattern_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, pattern: str) -> np.ndarray:
        return bayer_demosaic(img, pattern)


def moire_pattern(h: int, w: int, period: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) beat pattern of two mis-aligned screen gratings: curved bands, phase-shifted per channel.

    The beat of two fine gratings is a coarse grating; lens distortion and screen curvature bend it,
    modelled by a smooth sinusoidal warp of its phase.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.deg2rad(angle)
    u, v = np.cos(a) * xx + np.sin(a) * yy, -np.sin(a) * xx + np.cos(a) * yy
    bend_len = period * rng.uniform(3.0, 8.0)
    warp = rng.uniform(1.0, 3.0) * np.sin(np.float32(2 * np.pi / bend_len) * v + rng.uniform(0, 2 * np.pi))
    warp += np.float32(rng.uniform(-2.0, 2.0) / max(h, w) ** 2) * (u - w / 2) * (v - h / 2)  # barrel-like bend
    base = np.float32(2 * np.pi / period) * u + warp
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        out[..., c] = np.cos(base * np.float32(rng.uniform(0.97, 1.03)) + rng.uniform(0, 2 * np.pi))
    return out


@dataclass(frozen=True, kw_only=True)
class Moire(Degradation):
    """Moire interference (a photographed screen): coloured wavy bands multiplied onto the image."""

    domain = "restoration"
    instructions = ("Remove the moire pattern from this photo.", "Demoire this picture of a screen.",
                    "Remove the interference bands (period {period:.0f} px).")
    period_range: tuple[float, float] = limits(3.0, 200.0, (8.0, 40.0))
    angle_range: tuple[float, float] = limits(-90.0, 90.0, (-45.0, 45.0))
    strength_range: tuple[float, float] = limits(0.0, 1.0, (0.1, 0.35))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"period": draw_float(rng, self.period_range), "angle": draw_float(rng, self.angle_range),
                "strength": draw_float(rng, self.strength_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, period: float, angle: float,
              strength: float) -> np.ndarray:
        h, w = img.shape[:2]
        wave = moire_pattern(h, w, period, angle, rng)
        return kernels.clip01(img * (1.0 + np.float32(strength) * wave))


@dataclass(frozen=True, kw_only=True)
class Banding(Degradation):
    """Colour banding: too few levels per channel (contours in smooth gradients)."""

    domain = "restoration"
    instructions = ("Remove the banding from this image.", "Deband this photo.",
                    "Smooth out the contour bands ({levels} levels per channel).")
    levels_range: tuple[int, int] = limits(4, 128, (8, 32))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"levels": draw_int(rng, self.levels_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, levels: int) -> np.ndarray:
        return kernels.quantize(img, levels)
