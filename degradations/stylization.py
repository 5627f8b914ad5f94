"""Stylization plugins: input = clean, target = apply(clean)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from degradations import kernels
from degradations.base import Degradation, allowed, draw_float, draw_int, limits

#: Named colour-grading looks: a 3x3 colour matrix (rows = output R, G, B) and per-channel lift.
LOOKS: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "sepia": (((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131)), (0.0, 0.0, 0.0)),
    "teal_orange": (((1.15, -0.05, -0.05), (-0.02, 1.0, 0.02), (-0.15, 0.05, 1.1)), (0.0, 0.02, 0.06)),
    "cool": (((0.85, 0.05, 0.0), (0.0, 0.95, 0.05), (0.0, 0.05, 1.15)), (0.0, 0.01, 0.04)),
    "warm": (((1.15, 0.0, 0.0), (0.03, 1.0, 0.0), (0.0, 0.0, 0.8)), (0.04, 0.02, 0.0)),
    "vintage": (((0.75, 0.2, 0.05), (0.1, 0.75, 0.1), (0.1, 0.15, 0.6)), (0.08, 0.06, 0.1)),
    "noir": (((0.35, 0.6, 0.15), (0.35, 0.6, 0.15), (0.35, 0.6, 0.15)), (0.0, 0.0, 0.0)),
}


@dataclass(frozen=True, kw_only=True)
class OpencvStylization(Degradation):
    """OpenCV's non-photorealistic stylization (edge-aware smoothing + edge darkening: a watercolour look)."""

    domain = "stylization"
    instructions = ("Stylize this photo like a watercolour painting.", "Render this image in a painterly style.",
                    "Apply a watercolour stylization (smoothing {sigma_s:.0f}).")
    sigma_s_range: tuple[float, float] = limits(1.0, 200.0, (30.0, 90.0))
    sigma_r_range: tuple[float, float] = limits(0.01, 1.0, (0.3, 0.6))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma_s": draw_float(rng, self.sigma_s_range), "sigma_r": draw_float(rng, self.sigma_r_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma_s: float, sigma_r: float) -> np.ndarray:
        return kernels.from_uint8(cv2.stylization(kernels.to_uint8(img), sigma_s=sigma_s, sigma_r=sigma_r))


@dataclass(frozen=True, kw_only=True)
class PencilSketch(Degradation):
    """Pencil sketch (OpenCV ``pencilSketch``), grey or coloured pencil."""

    domain = "stylization"
    instructions = ("Turn this photo into a pencil sketch.", "Draw this image with a pencil.",
                    "Render this picture as a {mode} pencil drawing.")
    mode_choices: tuple[str, ...] = allowed(("grey", "colour"))
    shade_range: tuple[float, float] = limits(0.0, 0.1, (0.02, 0.06))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"mode": str(rng.choice(self.mode_choices)), "shade": draw_float(rng, self.shade_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, mode: str, shade: float) -> np.ndarray:
        grey, colour = cv2.pencilSketch(kernels.to_uint8(img), sigma_s=60, sigma_r=0.07, shade_factor=shade)
        return kernels.from_uint8(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB) if mode == "grey" else colour)


@dataclass(frozen=True, kw_only=True)
class Cartoon(Degradation):
    """Cartoon: flattened colours (bilateral smoothing + quantization) with bold dark outlines."""

    domain = "stylization"
    instructions = ("Make this photo look like a cartoon.", "Cartoonize this image.",
                    "Render this picture as a cartoon with {levels} colour levels.")
    levels_range: tuple[int, int] = limits(2, 16, (4, 8))
    line_size_range: tuple[int, int] = limits(3, 15, (5, 9))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"levels": draw_int(rng, self.levels_range), "line_size": draw_int(rng, self.line_size_range) | 1}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, levels: int, line_size: int) -> np.ndarray:
        u8 = kernels.to_uint8(img)
        smooth = u8
        for _ in range(2):  # repeated small bilateral passes flatten regions faster than one big one
            smooth = cv2.bilateralFilter(smooth, 7, 40, 7)
        flat = kernels.quantize(kernels.from_uint8(smooth), levels)
        grey = cv2.medianBlur(cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY), 5)
        edges = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, line_size, 4)
        return kernels.clip01(cv2.multiply(flat, kernels.gray3(edges.astype(np.float32) * np.float32(1 / 255))))


def kuwahara(img: np.ndarray, radius: int) -> np.ndarray:
    """Kuwahara filter: each pixel takes the mean of its least-variant quadrant (oil-paint strokes)."""
    k = radius + 1
    lum = kernels.luminance(img)
    mean = cv2.boxFilter(img, -1, (k, k), anchor=(0, 0), borderType=cv2.BORDER_REFLECT)
    lmean = cv2.boxFilter(lum, -1, (k, k), anchor=(0, 0), borderType=cv2.BORDER_REFLECT)
    var = cv2.boxFilter(lum * lum, -1, (k, k), anchor=(0, 0), borderType=cv2.BORDER_REFLECT) - lmean * lmean
    h, w = lum.shape
    pad = ((radius, radius), (radius, radius))
    means = np.pad(mean, (*pad, (0, 0)), mode="edge")
    vars_ = np.pad(var, pad, mode="edge")
    # Quadrant top-left corners relative to the pixel: (-r, -r), (-r, 0), (0, -r), (0, 0).
    offsets = [(0, 0), (0, radius), (radius, 0), (radius, radius)]
    stack_v = np.stack([vars_[dy:dy + h, dx:dx + w] for dy, dx in offsets])
    best = np.argmin(stack_v, axis=0)
    out = np.empty_like(img)
    for i, (dy, dx) in enumerate(offsets):
        sel = best == i
        out[sel] = means[dy:dy + h, dx:dx + w][sel]
    return out


@dataclass(frozen=True, kw_only=True)
class OilPainting(Degradation):
    """Oil painting by a Kuwahara filter (cv2.xphoto is absent from headless OpenCV builds)."""

    domain = "stylization"
    instructions = ("Turn this photo into an oil painting.", "Paint this image in oils.",
                    "Render this picture as an oil painting with {radius}-pixel brush strokes.")
    radius_range: tuple[int, int] = limits(1, 15, (3, 7))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"radius": draw_int(rng, self.radius_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, radius: int) -> np.ndarray:
        return kernels.clip01(kuwahara(img, radius))


@dataclass(frozen=True, kw_only=True)
class Posterize(Degradation):
    """Posterize: ``2**bits`` levels per channel."""

    domain = "stylization"
    instructions = ("Posterize this image.", "Reduce this photo to {bits} bits per channel.",
                    "Make a poster-style version of this picture with flat colour bands.")
    bits_range: tuple[int, int] = limits(1, 7, (2, 4))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"bits": draw_int(rng, self.bits_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, bits: int) -> np.ndarray:
        return kernels.quantize(img, 2**bits)


@dataclass(frozen=True, kw_only=True)
class ColorGrading(Degradation):
    """A named colour-grading look (matrix + lift + gentle S-curve), blended by ``strength``."""

    domain = "stylization"
    instructions = ("Apply a {look} colour grade to this photo.", "Colour-grade this image in a {look} look.",
                    "Give this picture a cinematic {look} grade.")
    look_choices: tuple[str, ...] = allowed(tuple(LOOKS))
    strength_range: tuple[float, float] = limits(0.0, 1.0, (0.7, 1.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"look": str(rng.choice(self.look_choices)), "strength": draw_float(rng, self.strength_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, look: str, strength: float) -> np.ndarray:
        matrix, lift = LOOKS[look]
        affine = np.hstack([np.asarray(matrix, np.float32), np.asarray(lift, np.float32)[:, None]])
        graded = kernels.clip01(cv2.transform(img, affine))  # matrix and lift in one pass
        graded = graded * graded * (3 - 2 * graded)  # smoothstep S-curve: filmic contrast
        return kernels.clip01(img + np.float32(strength) * (graded - img))


@dataclass(frozen=True, kw_only=True)
class Halftone(Degradation):
    """Print halftone: dots on a rotated grid whose area follows the ink (grey or per CMY channel)."""

    domain = "stylization"
    instructions = ("Render this image as a halftone print.", "Make a newspaper-style halftone of this photo.",
                    "Convert this picture to a {mode} halftone with {cell}-pixel cells.")
    cell_range: tuple[int, int] = limits(3, 32, (5, 10))
    mode_choices: tuple[str, ...] = allowed(("grey", "colour"))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"cell": draw_int(rng, self.cell_range), "mode": str(rng.choice(self.mode_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, cell: int, mode: str) -> np.ndarray:
        if mode == "grey":
            return kernels.gray3(_halftone_channel(kernels.luminance(img), cell, 45.0))
        # CMY screens at the classic angles; ink = 1 - channel.
        angles = (15.0, 75.0, 0.0)
        return np.dstack([_halftone_channel(img[..., c], cell, angles[c]) for c in range(3)])


def _halftone_channel(chan: np.ndarray, cell: int, angle: float) -> np.ndarray:
    h, w = chan.shape
    ink = cv2.blur(1.0 - chan, (cell, cell))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.deg2rad(angle)
    u, v = np.cos(t) * xx + np.sin(t) * yy, -np.sin(t) * xx + np.cos(t) * yy
    du = (u / cell) % 1.0 - 0.5
    dv = (v / cell) % 1.0 - 0.5
    dist = np.sqrt(du * du + dv * dv)
    radius = np.sqrt(np.maximum(ink, 0) / np.pi)  # dot area = ink fraction of the cell
    dot = np.clip((radius - dist) * cell + 0.5, 0.0, 1.0)  # one-pixel anti-aliased edge
    return np.ascontiguousarray(1.0 - dot, dtype=np.float32)


@dataclass(frozen=True, kw_only=True)
class PixelArt(Degradation):
    """Pixel art: big square pixels and a reduced per-channel palette, edges kept crisp."""

    domain = "stylization"
    instructions = ("Turn this image into pixel art.", "Render this photo as retro 8-bit pixel art.",
                    "Make pixel art with {block}-pixel blocks and {levels} levels per channel.")
    block_range: tuple[int, int] = limits(2, 64, (4, 12))
    levels_range: tuple[int, int] = limits(2, 32, (4, 8))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"block": draw_int(rng, self.block_range), "levels": draw_int(rng, self.levels_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, block: int, levels: int) -> np.ndarray:
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
        small = kernels.quantize(kernels.saturation(small, 1.3), levels)
        return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), dtype=np.float32)
