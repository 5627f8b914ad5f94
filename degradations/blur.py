"""Blur plugins (restoration): the Real-ESRGAN kernel family, sinc ringing, motion and defocus."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from degradations import kernels
from degradations.base import Degradation, PluginError, draw_float, draw_int, limits


def draw_odd(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """An odd integer in ``bounds`` (both ends odd, validated by :class:`KernelSized`)."""
    lo, hi = int(bounds[0]), int(bounds[1])
    return lo + 2 * draw_int(rng, (0, (hi - lo) // 2))


@dataclass(frozen=True, kw_only=True)
class KernelSized(Degradation):
    """A plugin with a ``kernel_size_range`` whose bounds must be odd (a centred kernel)."""

    kernel_size_range: tuple[int, int] = limits(3, 51, (7, 21))

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(int(v) != v or int(v) % 2 == 0 for v in self.kernel_size_range):
            raise PluginError(f"{type(self).__name__}.kernel_size_range: bounds must be odd integers, "
                              f"got {self.kernel_size_range!r}")


@dataclass(frozen=True, kw_only=True)
class GaussianBlur(KernelSized):
    """Isotropic Gaussian blur."""

    domain = "restoration"
    instructions = ("Deblur this image.", "Remove the Gaussian blur (sigma {sigma:.1f}).",
                    "Sharpen this blurry photo.", "Restore the fine details lost to blur.")
    sigma_range: tuple[float, float] = limits(0.1, 20.0, (0.2, 3.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range), "kernel_size": draw_odd(rng, self.kernel_size_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float, kernel_size: int) -> np.ndarray:
        return kernels.gaussian_blur(img, sigma, kernel_size)


@dataclass(frozen=True, kw_only=True)
class AnisotropicBlur(KernelSized):
    """Anisotropic, rotated Gaussian blur."""

    domain = "restoration"
    instructions = ("Deblur this image.", "Remove the directional blur from this photo.",
                    "Undo the anisotropic blur (sigmas {sigma_x:.1f} and {sigma_y:.1f}).")
    sigma_x_range: tuple[float, float] = limits(0.1, 20.0, (0.2, 3.0))
    sigma_y_range: tuple[float, float] = limits(0.1, 20.0, (0.2, 3.0))
    rotation_range: tuple[float, float] = limits(-math.pi, math.pi, (-math.pi, math.pi))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma_x": draw_float(rng, self.sigma_x_range), "sigma_y": draw_float(rng, self.sigma_y_range),
                "rotation": draw_float(rng, self.rotation_range), "kernel_size": draw_odd(rng, self.kernel_size_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma_x: float, sigma_y: float,
              rotation: float, kernel_size: int) -> np.ndarray:
        return kernels.convolve(img, kernels.gaussian_kernel(kernel_size, sigma_x, sigma_y, rotation))


@dataclass(frozen=True, kw_only=True)
class GeneralizedGaussianBlur(KernelSized):
    """Generalized Gaussian kernel ``exp(-0.5 d^beta)`` (Real-ESRGAN)."""

    domain = "restoration"
    instructions = ("Deblur this image.", "Remove the blur (generalized Gaussian, beta {beta:.1f}).",
                    "Make this blurry picture sharp again.")
    sigma_range: tuple[float, float] = limits(0.1, 20.0, (0.2, 3.0))
    beta_range: tuple[float, float] = limits(0.25, 8.0, (0.5, 4.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range), "beta": draw_float(rng, self.beta_range),
                "kernel_size": draw_odd(rng, self.kernel_size_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float, beta: float,
              kernel_size: int) -> np.ndarray:
        return kernels.convolve(img, kernels.generalized_gaussian_kernel(kernel_size, sigma, beta))


@dataclass(frozen=True, kw_only=True)
class PlateauBlur(KernelSized):
    """Plateau-shaped kernel ``1 / (1 + d^beta)`` (Real-ESRGAN)."""

    domain = "restoration"
    instructions = ("Deblur this image.", "Remove the plateau blur (sigma {sigma:.1f}).",
                    "Recover a sharp photo from this blurred one.")
    sigma_range: tuple[float, float] = limits(0.1, 20.0, (0.2, 3.0))
    beta_range: tuple[float, float] = limits(0.25, 8.0, (1.0, 2.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range), "beta": draw_float(rng, self.beta_range),
                "kernel_size": draw_odd(rng, self.kernel_size_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float, beta: float,
              kernel_size: int) -> np.ndarray:
        return kernels.convolve(img, kernels.plateau_kernel(kernel_size, sigma, beta))


@dataclass(frozen=True, kw_only=True)
class Sinc(KernelSized):
    """Circular low-pass (sinc/jinc) filter: ringing and overshoot artefacts."""

    domain = "restoration"
    instructions = ("Remove the ringing artifacts from this image.", "Clean up the halos around edges.",
                    "Suppress the ringing (cutoff {cutoff:.2f} rad/px) in this photo.")
    cutoff_range: tuple[float, float] = limits(0.1, math.pi, (math.pi / 5, math.pi))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"cutoff": draw_float(rng, self.cutoff_range), "kernel_size": draw_odd(rng, self.kernel_size_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, cutoff: float, kernel_size: int) -> np.ndarray:
        return kernels.convolve(img, kernels.sinc_kernel(kernel_size, cutoff))


@dataclass(frozen=True, kw_only=True)
class MotionBlur(KernelSized):
    """Linear camera-shake blur along a random direction."""

    domain = "restoration"
    instructions = ("Remove the motion blur from this photo.", "Undo the camera shake.",
                    "Deblur this image: it was smeared over {kernel_size} pixels at {angle:.0f} degrees.")
    kernel_size_range: tuple[int, int] = limits(3, 51, (5, 25))
    angle_range: tuple[float, float] = limits(-180.0, 180.0, (-90.0, 90.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"kernel_size": draw_odd(rng, self.kernel_size_range), "angle": draw_float(rng, self.angle_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, kernel_size: int, angle: float) -> np.ndarray:
        return kernels.convolve(img, kernels.motion_kernel(kernel_size, angle))


@dataclass(frozen=True, kw_only=True)
class DefocusBlur(Degradation):
    """Out-of-focus blur: a uniform disk point-spread function."""

    domain = "restoration"
    instructions = ("Refocus this out-of-focus photo.", "Remove the defocus blur.",
                    "Sharpen this image; the lens was out of focus (radius {radius:.1f} px).")
    radius_range: tuple[float, float] = limits(0.5, 25.0, (1.5, 8.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"radius": draw_float(rng, self.radius_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, radius: float) -> np.ndarray:
        return kernels.convolve(img, kernels.disk_kernel(radius))
