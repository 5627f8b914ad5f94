"""Restoration plugins: noise, compression and resampling (input = apply(clean), target = clean)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from degradations import kernels
from degradations.base import Degradation, PluginError, allowed, draw_bool, draw_float, draw_int, limits

_SR_INTERP = ("area", "bilinear", "bicubic")


@dataclass(frozen=True, kw_only=True)
class GaussianNoise(Degradation):
    """Additive Gaussian noise; sigma in units of full scale (0.1 = 25.5 grey levels)."""

    domain = "restoration"
    version = 3  # v2: faster normals; v3: SplitMix64 bits keyed from rng. Same distribution, other pixels
    instructions = ("Remove the noise from this image.", "Denoise this photo (noise level {sigma:.3f}).",
                    "Clean up the Gaussian noise in this picture.", "Denoise the image.")
    sigma_range: tuple[float, float] = limits(0.0, 1.0, (0.01, 0.2))
    #: Probability that one noise value is shared by the three channels (grey noise).
    gray_probability: float = 0.0

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range), "gray": draw_bool(rng, self.gray_probability)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float, gray: bool) -> np.ndarray:
        return kernels.add_gaussian_noise(img, sigma, gray, rng)


@dataclass(frozen=True, kw_only=True)
class PoissonNoise(Degradation):
    """Photon shot noise; ``scale`` multiplies the deviation of an 8-bit sensor's Poisson counts."""

    domain = "restoration"
    version = 3  # v2: faster normals; v3: SplitMix64 bits keyed from rng. Same distribution, other pixels
    instructions = ("Remove the shot noise from this image.", "Denoise this low-photon photo.",
                    "Clean up the Poisson noise (strength {scale:.2f}).")
    scale_range: tuple[float, float] = limits(0.0, 10.0, (0.05, 3.0))
    #: Probability that one noise value is shared by the three channels (grey noise).
    gray_probability: float = 0.0

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"scale": draw_float(rng, self.scale_range), "gray": draw_bool(rng, self.gray_probability)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, scale: float, gray: bool) -> np.ndarray:
        return kernels.add_poisson_noise(img, scale, gray, rng)


@dataclass(frozen=True, kw_only=True)
class SpeckleNoise(Degradation):
    """Multiplicative speckle noise (ultrasound, SAR, laser imaging)."""

    domain = "restoration"
    version = 3  # v2: faster normals; v3: SplitMix64 bits keyed from rng. Same distribution, other pixels
    instructions = ("Remove the speckle noise from this image.", "Despeckle this picture.",
                    "Clean up the multiplicative noise (sigma {sigma:.2f}).")
    sigma_range: tuple[float, float] = limits(0.0, 1.0, (0.05, 0.4))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"sigma": draw_float(rng, self.sigma_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, sigma: float) -> np.ndarray:
        return kernels.add_speckle_noise(img, sigma, rng)


@dataclass(frozen=True, kw_only=True)
class SaltPepperNoise(Degradation):
    """Impulse noise: isolated white and black pixels."""

    domain = "restoration"
    version = 2  # faster noise/draws: same distribution, other pixels than version 1
    instructions = ("Remove the salt-and-pepper noise.", "Clean the white and black specks from this image.",
                    "Remove the impulse noise ({amount:.1%} of pixels hit).")
    amount_range: tuple[float, float] = limits(0.0, 0.5, (0.005, 0.08))
    salt_ratio_range: tuple[float, float] = limits(0.0, 1.0, (0.3, 0.7))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"amount": draw_float(rng, self.amount_range), "salt_ratio": draw_float(rng, self.salt_ratio_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, amount: float, salt_ratio: float) -> np.ndarray:
        return kernels.add_salt_pepper(img, amount, salt_ratio, rng)


@dataclass(frozen=True, kw_only=True)
class IsoNoise(Degradation):
    """High-ISO camera noise: brightness-dependent luminance grain plus colour blotches."""

    domain = "restoration"
    version = 3  # v2: faster normals; v3: SplitMix64 bits keyed from rng. Same distribution, other pixels
    instructions = ("Remove the high-ISO noise from this photo.", "Denoise this night shot.",
                    "Clean the colour noise and grain (intensity {intensity:.2f}) from this picture.")
    intensity_range: tuple[float, float] = limits(0.0, 1.0, (0.03, 0.2))
    color_shift_range: tuple[float, float] = limits(0.0, 0.5, (0.01, 0.06))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"intensity": draw_float(rng, self.intensity_range),
                "color_shift": draw_float(rng, self.color_shift_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, intensity: float,
              color_shift: float) -> np.ndarray:
        return kernels.add_iso_noise(img, intensity, color_shift, rng)


@dataclass(frozen=True, kw_only=True)
class Jpeg(Degradation):
    """JPEG compression artefacts (8x8 blocking, ringing, colour bleeding)."""

    domain = "restoration"
    instructions = ("Remove the JPEG artifacts from this image.", "Undo the compression artifacts.",
                    "Restore this image saved as JPEG at quality {quality}.", "Deblock this photo.")
    quality_range: tuple[int, int] = limits(1, 100, (30, 95))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"quality": draw_int(rng, self.quality_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, quality: int) -> np.ndarray:
        return kernels.encode_decode(img, ".jpg", quality)


@dataclass(frozen=True, kw_only=True)
class Webp(Degradation):
    """WebP (VP8) compression artefacts: smeared detail and blocky colour."""

    domain = "restoration"
    instructions = ("Remove the WebP compression artifacts.", "Restore this over-compressed image.",
                    "Undo the lossy WebP encoding at quality {quality}.")
    quality_range: tuple[int, int] = limits(1, 100, (5, 80))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"quality": draw_int(rng, self.quality_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, quality: int) -> np.ndarray:
        return kernels.encode_decode(img, ".webp", quality)


@dataclass(frozen=True, kw_only=True)
class Resize(Degradation):
    """Rescale by ``scale`` (or to an explicit size, which wins): the resampling step of SR chains."""

    domain = "restoration"
    changes_size = True
    instructions = ("Upscale this low-resolution image.", "Super-resolve this picture.",
                    "Restore the detail lost when this image was resized with {interpolation} interpolation.")
    scale_range: tuple[float, float] = limits(0.05, 4.0, (0.25, 1.0))
    interpolation_choices: tuple[str, ...] = allowed(kernels.INTERPOLATIONS, _SR_INTERP)

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"scale": draw_float(rng, self.scale_range),
                "interpolation": str(rng.choice(self.interpolation_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, interpolation: str, scale: float | None = None,
              height: int | None = None, width: int | None = None) -> np.ndarray:
        if height is None or width is None:
            if scale is None:
                raise PluginError("resize: give scale or both height and width")
            height, width = kernels.scaled_size(img.shape, scale)
        return kernels.resize(img, height, width, interpolation)


@dataclass(frozen=True, kw_only=True)
class SrX2(Degradation):
    """x2 down-sampling for super-resolution (the corpus stores the input resized back)."""

    domain = "restoration"
    changes_size = True
    factor = 2
    instructions = ("Upscale this image by 2x.", "Super-resolve this picture to twice its resolution.",
                    "Recover the details of this 2x down-sampled ({interpolation}) photo.")
    interpolation_choices: tuple[str, ...] = allowed(kernels.INTERPOLATIONS, _SR_INTERP)

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"interpolation": str(rng.choice(self.interpolation_choices))}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, interpolation: str) -> np.ndarray:
        h, w = kernels.scaled_size(img.shape, 1.0 / self.factor)
        return kernels.resize(img, h, w, interpolation)


@dataclass(frozen=True, kw_only=True)
class SrX4(SrX2):
    """x4 down-sampling for super-resolution."""

    factor = 4
    instructions = ("Upscale this image by 4x.", "Super-resolve this picture to four times its resolution.",
                    "Recover the details of this 4x down-sampled ({interpolation}) photo.")


@dataclass(frozen=True, kw_only=True)
class Pixelation(Degradation):
    """Mosaic of ``block`` x ``block`` flat cells (censoring / extreme down-sampling)."""

    domain = "restoration"
    instructions = ("Depixelate this image.", "Remove the pixelation.",
                    "Restore this image from its {block}x{block} pixel blocks.")
    block_range: tuple[int, int] = limits(2, 64, (3, 12))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"block": draw_int(rng, self.block_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, block: int) -> np.ndarray:
        return kernels.pixelate(img, block)
