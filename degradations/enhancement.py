"""Enhancement plugins: exposure, tone and colour faults (input = apply(clean), target = clean)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from degradations import kernels
from degradations.base import Degradation, draw_float, limits


@dataclass(frozen=True, kw_only=True)
class LowLight(Degradation):
    """A dark, noisy capture: gamma darkening, reduced gain, then sensor noise."""

    domain = "enhancement"
    version = 3  # v2: faster normals; v3: SplitMix64 bits keyed from rng. Same distribution, other pixels
    instructions = ("Enhance this low-light photo.", "Brighten this dark image and remove its noise.",
                    "Make this night shot look like it was taken in good light.",
                    "Correct this underlit image (light level {gain:.2f}).")
    gamma_range: tuple[float, float] = limits(1.0, 5.0, (1.5, 3.0))
    gain_range: tuple[float, float] = limits(0.01, 1.0, (0.1, 0.5))
    noise_range: tuple[float, float] = limits(0.0, 0.2, (0.0, 0.03))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"gamma": draw_float(rng, self.gamma_range), "gain": draw_float(rng, self.gain_range),
                "noise": draw_float(rng, self.noise_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, gamma: float, gain: float,
              noise: float) -> np.ndarray:
        dark = kernels.gain(kernels.gamma(img, gamma), gain)
        return kernels.add_gaussian_noise(dark, noise, False, rng)


@dataclass(frozen=True, kw_only=True)
class Overexposure(Degradation):
    """Too much light: gain above 1 with clipped highlights, lifted shadows."""

    domain = "enhancement"
    instructions = ("Fix the overexposure in this photo.", "Recover the blown-out highlights.",
                    "This image is {stops:.1f} stops overexposed; correct it.")
    stops_range: tuple[float, float] = limits(0.0, 4.0, (0.7, 2.0))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"stops": draw_float(rng, self.stops_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, stops: float) -> np.ndarray:
        # Exposure acts on linear light: decode sRGB-ish gamma 2.2, scale, re-encode.
        return kernels.gamma(kernels.gain(kernels.gamma(img, 2.2), 2.0**stops), 1 / 2.2)


@dataclass(frozen=True, kw_only=True)
class Underexposure(Degradation):
    """Too little light (no noise): every value scaled down in linear light."""

    domain = "enhancement"
    instructions = ("Fix the underexposure in this photo.", "Brighten this underexposed picture.",
                    "This image is {stops:.1f} stops underexposed; correct it.")
    stops_range: tuple[float, float] = limits(0.0, 6.0, (0.7, 2.5))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"stops": draw_float(rng, self.stops_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, stops: float) -> np.ndarray:
        return kernels.gamma(kernels.gain(kernels.gamma(img, 2.2), 2.0**-stops), 1 / 2.2)


@dataclass(frozen=True, kw_only=True)
class ColorCast(Degradation):
    """Wrong white balance: per-channel gains (a warm, cool, green or magenta cast)."""

    domain = "enhancement"
    instructions = ("Correct the white balance of this photo.", "Remove the colour cast.",
                    "Fix the colours: red x{red:.2f}, green x{green:.2f}, blue x{blue:.2f} were applied.")
    gain_range: tuple[float, float] = limits(0.3, 2.0, (0.6, 1.4))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        r, g, b = (draw_float(rng, self.gain_range) for _ in range(3))
        return {"red": r, "green": g, "blue": b}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, red: float, green: float,
              blue: float) -> np.ndarray:
        return kernels.channel_gains(img, (red, green, blue))


@dataclass(frozen=True, kw_only=True)
class LowContrast(Degradation):
    """Flat, hazy-looking tones: deviations from the mean shrunk by ``factor``."""

    domain = "enhancement"
    instructions = ("Increase the contrast of this image.", "Fix this washed-out, flat photo.",
                    "Restore the contrast (it was reduced to {factor:.0%}).")
    factor_range: tuple[float, float] = limits(0.05, 1.0, (0.25, 0.7))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"factor": draw_float(rng, self.factor_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, factor: float) -> np.ndarray:
        return kernels.contrast(img, factor)


@dataclass(frozen=True, kw_only=True)
class Desaturation(Degradation):
    """Faded colour: a blend towards grey (0 = fully grey)."""

    domain = "enhancement"
    instructions = ("Restore the colours of this faded photo.", "Colourise this washed-out image.",
                    "Bring back the saturation (it was reduced to {factor:.0%}).")
    factor_range: tuple[float, float] = limits(0.0, 1.0, (0.0, 0.5))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"factor": draw_float(rng, self.factor_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, factor: float) -> np.ndarray:
        return kernels.saturation(img, factor)


@dataclass(frozen=True, kw_only=True)
class Vignetting(Degradation):
    """Lens vignetting: smooth darkening towards the corners."""

    domain = "enhancement"
    instructions = ("Remove the vignetting from this photo.", "Brighten the dark corners evenly.",
                    "Correct the lens fall-off (corners darkened by {strength:.0%}).")
    strength_range: tuple[float, float] = limits(0.0, 1.0, (0.3, 0.8))
    radius_range: tuple[float, float] = limits(0.3, 2.0, (0.8, 1.3))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"strength": draw_float(rng, self.strength_range), "radius": draw_float(rng, self.radius_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, strength: float, radius: float) -> np.ndarray:
        return kernels.vignette(img, strength, radius)


@dataclass(frozen=True, kw_only=True)
class HdrCompression(Degradation):
    """A flat, tone-compressed rendering (global Reinhard-style curve + contrast loss): enhance it back."""

    domain = "enhancement"
    instructions = ("Restore the dynamic range of this flat image.", "Make this dull, tone-mapped photo vivid.",
                    "Undo the tone compression (strength {strength:.2f}).")
    strength_range: tuple[float, float] = limits(0.0, 1.0, (0.4, 0.9))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"strength": draw_float(rng, self.strength_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, strength: float) -> np.ndarray:
        return kernels.tone_compress(img, strength)
