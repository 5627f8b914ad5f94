"""Weather plugins (restoration): rain streaks, haze by the atmospheric scattering model, snow.

Written on cv2/numpy rather than wrapped: these are ~10x faster than albumentations' RandomRain /
RandomFog / RandomSnow at the same look (see bench/degradations.py), and a corpus build runs them millions of
times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from degradations import kernels
from degradations.base import Degradation, draw_float, draw_int, limits


def depth_proxy(h: int, w: int, horizon: float, rng: np.random.Generator) -> np.ndarray:
    """A plausible relative depth in [0, 1]: far at the top (above ``horizon``), with smooth random relief."""
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    ramp = np.clip((1.0 - rows) / max(1.0 - horizon, 1e-3), 0.0, 1.0)
    relief = cv2.resize(rng.random((6, 6), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return kernels.clip01(0.75 * ramp + 0.25 * relief)


def haze(img: np.ndarray, beta: float, airlight: float, depth: np.ndarray) -> np.ndarray:
    """Koschmieder's model ``I = J t + A (1 - t)``, transmission ``t = exp(-beta * depth)``."""
    t = kernels.gray3(np.exp(-np.float32(beta) * depth))
    air = (airlight * 0.97, airlight * 0.99, airlight, 0.0)  # slightly blue sky light
    return kernels.clip01(cv2.add(cv2.multiply(img, t), cv2.multiply(1.0 - t, air)))


def _draw_groups(canvas: np.ndarray, segments: np.ndarray, thickness: int) -> np.ndarray:
    """Draw (N, 2, 2) segments anti-aliased in three brightness groups (one OpenCV call each)."""
    for i, part in enumerate(np.array_split(segments, 3)):
        if len(part):
            cv2.polylines(canvas, part, False, 0.5 + 0.25 * i, thickness, cv2.LINE_AA)
    return canvas


def streaks(h: int, w: int, density: float, length: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) streak intensity: ``density * H * W`` line segments along ``angle``, softened.

    Rasterised with numpy (a point per pixel of the longest drop, rounded to the nearest pixel) rather than
    by ``cv2.polylines``, whose per-segment cost dominated; the drops come in three brightness groups.
    """
    n = round(density * h * w)
    start = np.column_stack([rng.integers(-length, w, n), rng.integers(-length, h, n)]).astype(np.float32)
    along = rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None] * np.float32(length)  # nearer drops are longer
    along = along * np.linspace(0.0, 1.0, length + 1, dtype=np.float32)  # (n, length + 1) steps along each drop
    pad = 2 * length  # drops start up to `length` outside the image and reach `length` further
    start += np.float32(pad + 0.5)  # every coordinate is now positive, so truncation rounds
    canvas = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    flat = (along * np.float32(np.sin(np.deg2rad(angle))) + start[:, 1:]).astype(np.int32)  # y
    flat *= canvas.shape[1]
    flat += (along * np.float32(np.cos(np.deg2rad(angle))) + start[:, :1]).astype(np.int32)  # + x
    for i, part in enumerate(np.array_split(flat, 3)):  # brighter groups drawn over dimmer ones where they cross
        canvas.ravel()[part] = 0.5 + 0.25 * i
    return cv2.GaussianBlur(canvas[pad:pad + h, pad:pad + w], (3, 3), 0.7)


@dataclass(frozen=True, kw_only=True)
class Rain(Degradation):
    """Rain streaks: bright, slanted, motion-blurred drops over a slightly dimmed scene."""

    domain = "restoration"
    version = 2  # faster noise/draws: same distribution, other pixels than version 1
    instructions = ("Remove the rain from this photo.", "Derain this image.",
                    "Remove the rain streaks (density {density:.3f}) from this picture.")
    density_range: tuple[float, float] = limits(0.0, 0.1, (0.004, 0.02))
    length_range: tuple[int, int] = limits(3, 81, (15, 40))
    angle_range: tuple[float, float] = limits(45.0, 135.0, (70.0, 110.0))
    opacity_range: tuple[float, float] = limits(0.0, 1.0, (0.4, 0.8))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"density": draw_float(rng, self.density_range),
                "length": draw_int(rng, self.length_range),
                "angle": draw_float(rng, self.angle_range), "opacity": draw_float(rng, self.opacity_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, density: float, length: int, angle: float,
              opacity: float) -> np.ndarray:
        h, w = img.shape[:2]
        s = streaks(h, w, density, length, angle, rng) * np.float32(opacity)
        # dim + s * (0.9 - dim) with dim = 0.85 img (overcast light); s <= 1 keeps it inside [0, 0.9].
        out = kernels.gray3(np.float32(0.9) * s)
        cv2.accumulateProduct(img, kernels.gray3(np.float32(0.85) - np.float32(0.85) * s), out)  # out += img * a
        return out


@dataclass(frozen=True, kw_only=True)
class Haze(Degradation):
    """Haze / fog by the atmospheric scattering model over a depth proxy."""

    domain = "restoration"
    instructions = ("Dehaze this image.", "Remove the fog from this photo.",
                    "Clear the haze (scattering coefficient {beta:.2f}) from this picture.")
    beta_range: tuple[float, float] = limits(0.0, 5.0, (0.6, 2.5))
    airlight_range: tuple[float, float] = limits(0.3, 1.0, (0.7, 0.95))
    horizon_range: tuple[float, float] = limits(0.0, 0.95, (0.3, 0.8))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"beta": draw_float(rng, self.beta_range), "airlight": draw_float(rng, self.airlight_range),
                "horizon": draw_float(rng, self.horizon_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, beta: float, airlight: float,
              horizon: float) -> np.ndarray:
        h, w = img.shape[:2]
        return haze(img, beta, airlight, depth_proxy(h, w, horizon, rng))


def flakes(h: int, w: int, density: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) snowflake layer: ``density * H * W`` soft round flakes of radius ~``size``."""
    n = round(density * h * w)
    points = np.column_stack([rng.integers(0, w, n), rng.integers(0, h, n)]).astype(np.int32)
    canvas = _draw_groups(np.zeros((h, w), np.float32), np.stack([points, points], axis=1),
                          max(1, round(2 * size)))
    return cv2.GaussianBlur(canvas, (0, 0), max(0.5, size * 0.5))


@dataclass(frozen=True, kw_only=True)
class Snow(Degradation):
    """Falling snow: two layers of flakes (small/dense, large/sparse) over a whitened veil."""

    domain = "restoration"
    instructions = ("Remove the snow from this photo.", "Desnow this image.",
                    "Remove the falling snowflakes (density {density:.3f}) from this picture.")
    density_range: tuple[float, float] = limits(0.0, 0.05, (0.002, 0.01))
    size_range: tuple[float, float] = limits(0.5, 6.0, (1.0, 3.0))
    veil_range: tuple[float, float] = limits(0.0, 0.8, (0.05, 0.3))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"density": draw_float(rng, self.density_range), "size": draw_float(rng, self.size_range),
                "veil": draw_float(rng, self.veil_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, density: float, size: float,
              veil: float) -> np.ndarray:
        h, w = img.shape[:2]
        layer = flakes(h, w, density, size * 0.5, rng) + flakes(h, w, density * 0.3, size, rng)
        base = cv2.addWeighted(img, 1.0 - veil, img, 0.0, 0.9 * veil)  # whitened veil, inside [0, 1]
        return np.maximum(base, kernels.gray3(np.minimum(layer, np.float32(0.98))))
