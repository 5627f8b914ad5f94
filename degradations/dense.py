"""Dense-prediction plugins: a map computed from the clean image with a classical operator.

input = clean, target = apply(clean). Every map is (H, W, 3) float32 in [0, 1]; single-channel maps
are replicated. Maps with fine gradations ask the corpus for 16-bit targets (``target_bits = 16``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from degradations import kernels
from degradations.base import Degradation, allowed, draw_float, draw_int, limits


def _normalise(mag: np.ndarray) -> np.ndarray:
    """Scale a non-negative map by its 99.5th percentile so maps of dim and bright images look alike."""
    top = float(np.percentile(mag, 99.5))
    return kernels.clip01(mag / np.float32(top if top > 1e-6 else 1.0))


@dataclass(frozen=True, kw_only=True)
class Canny(Degradation):
    """Canny edge map: binary, one-pixel-wide edges at gradient maxima."""

    domain = "dense"
    instructions = ("Detect the edges in this image.", "Produce a Canny edge map of this photo.",
                    "Draw the edges (Canny, thresholds {low}/{high}).")
    low_range: tuple[int, int] = limits(1, 254, (30, 90))
    ratio_range: tuple[float, float] = limits(1.5, 4.0, (2.0, 3.0))
    sigma_range: tuple[float, float] = limits(0.0, 5.0, (0.8, 1.6))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        low = draw_int(rng, self.low_range)
        return {"low": low, "high": min(255, round(low * draw_float(rng, self.ratio_range))),
                "sigma": draw_float(rng, self.sigma_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, low: int, high: int,
              sigma: float) -> np.ndarray:
        gray = kernels.to_uint8(kernels.luminance(img))
        if sigma > 0:
            gray = cv2.GaussianBlur(gray, (0, 0), sigma)
        edges = cv2.Canny(gray, low, high, L2gradient=True)
        return kernels.gray3(edges.astype(np.float32) * np.float32(1 / 255))


@dataclass(frozen=True, kw_only=True)
class Sobel(Degradation):
    """Sobel gradient magnitude."""

    domain = "dense"
    target_bits = 16
    instructions = ("Compute the gradient magnitude of this image.", "Produce a Sobel edge-strength map.",
                    "Show where the intensity changes (Sobel, {ksize}x{ksize}).")
    ksize_choices: tuple[int, ...] = allowed((1, 3, 5, 7), (3, 5))
    sigma_range: tuple[float, float] = limits(0.0, 5.0, (0.0, 1.5))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"ksize": int(rng.choice(self.ksize_choices)), "sigma": draw_float(rng, self.sigma_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, ksize: int, sigma: float) -> np.ndarray:
        gray = kernels.luminance(img)
        if sigma > 0:
            gray = cv2.GaussianBlur(gray, (0, 0), sigma)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=ksize)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=ksize)
        # np.sqrt, not cv2.magnitude: the latter is not bit-reproducible between calls in OpenCV 5.
        return kernels.gray3(_normalise(np.sqrt(gx * gx + gy * gy)))


@dataclass(frozen=True, kw_only=True)
class Laplacian(Degradation):
    """Absolute Laplacian of Gaussian: second-derivative edge response."""

    domain = "dense"
    target_bits = 16
    instructions = ("Compute the Laplacian of this image.", "Produce a Laplacian-of-Gaussian edge map.",
                    "Show the second-derivative response (smoothing sigma {sigma:.1f}).")
    sigma_range: tuple[float, float] = limits(0.0, 5.0, (0.5, 2.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float) -> np.ndarray:
        gray = kernels.luminance(img)
        if sigma > 0:
            gray = cv2.GaussianBlur(gray, (0, 0), sigma)
        return kernels.gray3(_normalise(np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=3))))


@dataclass(frozen=True, kw_only=True)
class EdgePreservingSmoothing(Degradation):
    """Flatten texture, keep strong edges (domain-transform recursive filter, Gastal & Oliveira)."""

    domain = "dense"
    instructions = ("Smooth this image while preserving its edges.", "Remove the texture but keep the structure.",
                    "Apply edge-preserving smoothing (spatial {sigma_s:.0f}, range {sigma_r:.2f}).")
    sigma_s_range: tuple[float, float] = limits(1.0, 200.0, (30.0, 100.0))
    sigma_r_range: tuple[float, float] = limits(0.01, 1.0, (0.2, 0.6))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma_s": draw_float(rng, self.sigma_s_range), "sigma_r": draw_float(rng, self.sigma_r_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma_s: float, sigma_r: float) -> np.ndarray:
        out = cv2.edgePreservingFilter(kernels.to_uint8(img), flags=cv2.RECURS_FILTER,
                                       sigma_s=sigma_s, sigma_r=sigma_r)
        return kernels.from_uint8(out)


@dataclass(frozen=True, kw_only=True)
class SlicSuperpixels(Degradation):
    """SLIC superpixels, each filled with its mean colour."""

    domain = "dense"
    instructions = ("Segment this image into superpixels.", "Produce a SLIC superpixel map with mean colours.",
                    "Partition the photo into about {segments} superpixels.")
    segments_range: tuple[int, int] = limits(8, 4000, (50, 400))
    compactness_range: tuple[float, float] = limits(0.1, 100.0, (5.0, 20.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"segments": draw_int(rng, self.segments_range), "compactness": draw_float(rng, self.compactness_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, segments: int, compactness: float) -> np.ndarray:
        from skimage.segmentation import slic

        # 6 k-means iterations instead of 10: the segments have settled by then, and 1024^2 stays ~1 s.
        labels = slic(img, n_segments=segments, compactness=compactness, start_label=0, max_num_iter=6,
                      enforce_connectivity=True, channel_axis=-1)
        return _mean_colour(img, labels)


def _mean_colour(img: np.ndarray, labels: np.ndarray) -> np.ndarray:
    flat = labels.ravel()
    counts = np.maximum(np.bincount(flat), 1)
    means = np.stack([np.bincount(flat, img[..., c].ravel()) / counts for c in range(3)], axis=1)
    return np.ascontiguousarray(means[labels], dtype=np.float32)


@dataclass(frozen=True, kw_only=True)
class GreySegmentation(Degradation):
    """Multi-level Otsu segmentation of the luminance into ``classes`` grey levels."""

    domain = "dense"
    instructions = ("Segment this image into {classes} grey levels.", "Produce a multi-level threshold map.",
                    "Quantize the brightness into {classes} classes (Otsu).")
    classes_range: tuple[int, int] = limits(2, 6, (2, 5))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"classes": draw_int(rng, self.classes_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, classes: int) -> np.ndarray:
        from skimage.filters import threshold_multiotsu

        gray = kernels.luminance(img)
        try:
            thresholds = threshold_multiotsu(gray, classes=classes, nbins=128)
        except ValueError:  # fewer distinct levels than classes (e.g. a flat image): one class
            thresholds = np.array([], np.float32)
        labels = np.digitize(gray, thresholds).astype(np.float32)
        return kernels.gray3(labels / np.float32(classes - 1))


@dataclass(frozen=True, kw_only=True)
class HistogramEqualization(Degradation):
    """Histogram-equalised rendering of the image (global or CLAHE), on luminance only."""

    domain = "dense"
    instructions = ("Equalize the histogram of this image.", "Produce the histogram-equalized version.",
                    "Apply {method} histogram equalization.")
    method_choices: tuple[str, ...] = allowed(("global", "clahe"))
    clip_limit_range: tuple[float, float] = limits(0.5, 10.0, (1.5, 4.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"method": str(rng.choice(self.method_choices)), "clip_limit": draw_float(rng, self.clip_limit_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, method: str, clip_limit: float) -> np.ndarray:
        ycc = cv2.cvtColor(kernels.to_uint8(img), cv2.COLOR_RGB2YCrCb)
        if method == "global":
            ycc[..., 0] = cv2.equalizeHist(np.ascontiguousarray(ycc[..., 0]))
        else:
            ycc[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(8, 8)).apply(
                np.ascontiguousarray(ycc[..., 0]))
        return kernels.from_uint8(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB))


@dataclass(frozen=True, kw_only=True)
class LineArt(Degradation):
    """Line drawing by the extended difference of Gaussians (XDoG, Winnemoeller 2012): dark lines on white."""

    domain = "dense"
    instructions = ("Turn this photo into line art.", "Extract a clean line drawing of this image.",
                    "Draw the outlines of this picture (line scale {sigma:.1f}).")
    sigma_range: tuple[float, float] = limits(0.3, 5.0, (0.8, 2.0))
    sharpness_range: tuple[float, float] = limits(1.0, 200.0, (20.0, 80.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range), "sharpness": draw_float(rng, self.sharpness_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float, sharpness: float) -> np.ndarray:
        gray = kernels.luminance(img)
        dog = cv2.GaussianBlur(gray, (0, 0), sigma) - np.float32(0.98) * cv2.GaussianBlur(gray, (0, 0), 1.6 * sigma)
        eps = np.float32(0.005)
        lines = np.where(dog >= eps, np.float32(1), 1 + np.tanh(np.float32(sharpness) * (dog - eps)))
        return kernels.gray3(kernels.clip01(lines))
