"""Plugins built on albumentations 2.0.8 where it already does the job well.

Our contract holds around them: the visible parameters are sampled by us and recorded, and every other
random draw comes from the ``rng`` handed to ``apply``. ``SunFlare`` runs the whole transform, seeded with
an integer drawn from ``rng`` through ``set_random_seed``, which gives it its own ``numpy.random.Generator``
and ``random.Random`` (no global state: the contract check verifies it). ``Spatter`` calls albumentations'
functional kernels on a liquid layer drawn from ``rng``, and ``Shadow`` is its polygon model in float32 (the
functional round-trips through uint8): building a transform per call (validation included) cost more than
the effect. Images go in and out as float32 RGB in [0, 1], which albumentations accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from degradations import kernels
from degradations.base import Degradation, allowed, draw_float, draw_int, limits


def run_albu(transform: Any, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a built albumentations transform (``p=1``) with randomness drawn from ``rng``."""
    transform.set_random_seed(int(rng.integers(0, 2**32 - 1)))
    # The output is a fresh array, so clip it in place rather than copying it first.
    return kernels.clip01(np.asarray(transform(image=img)["image"], dtype=np.float32))


@dataclass(frozen=True, kw_only=True)
class Spatter(Degradation):
    """Raindrops or mud spatter on the lens (albumentations ``Spatter``)."""

    domain = "restoration"
    version = 3  # v2: faster normals; v3: SplitMix64 bits keyed from rng. Same distribution, other pixels
    instructions = ("Remove the {mode} drops from this photo.", "Clean the lens spatter off this image.",
                    "Remove the raindrops and smudges from this picture.")
    mode_choices: tuple[str, ...] = allowed(("rain", "mud"))
    intensity_range: tuple[float, float] = limits(0.0, 1.0, (0.4, 0.8))
    cutout_range: tuple[float, float] = limits(0.0, 1.0, (0.6, 0.72))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"mode": str(rng.choice(self.mode_choices)), "intensity": draw_float(rng, self.intensity_range),
                "cutout": draw_float(rng, self.cutout_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, mode: str, intensity: float,
              cutout: float) -> np.ndarray:
        from albumentations.augmentations.pixel import functional as fpixel

        # Spatter's defaults: mean 0.65, std 0.3, blur sigma 2; its colours for rain and mud.
        layer = kernels.liquid_layer(*img.shape[:2], 0.65, 0.3, 2.0, cutout, rng)
        if mode == "rain":
            drops = fpixel.get_rain_params(layer, np.array([238, 238, 175]) / 255, intensity)["drops"]
            return kernels.clip01(fpixel.spatter_rain(img, drops))
        mud = fpixel.get_mud_params(layer, np.array([20, 42, 63]) / 255, cutout, 2.0, intensity, rng)
        return kernels.clip01(fpixel.spatter_mud(img, mud["non_mud"], mud["mud"]))


@dataclass(frozen=True, kw_only=True)
class SunFlare(Degradation):
    """Lens flare from a bright light source in the upper half (albumentations ``RandomSunFlare``)."""

    domain = "restoration"
    instructions = ("Remove the lens flare from this photo.", "Take out the sun flare.",
                    "Remove the flare and its {circles} ghost circles from this image.")
    radius_range: tuple[float, float] = limits(0.05, 1.0, (0.2, 0.5))
    circles_range: tuple[int, int] = limits(0, 20, (4, 10))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"radius": draw_float(rng, self.radius_range),
                "circles": draw_int(rng, self.circles_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, radius: float, circles: int) -> np.ndarray:
        import albumentations as A

        src = max(1, round(radius * max(img.shape[:2])))  # radius in units of the image's long side
        t = A.RandomSunFlare(flare_roi=(0, 0, 1, 0.5), src_radius=src, num_flare_circles_range=(circles, circles),
                             p=1.0)
        return run_albu(t, img, rng)


@dataclass(frozen=True, kw_only=True)
class Shadow(Degradation):
    """Cast shadows: darkened random polygons (albumentations ``RandomShadow``'s model)."""

    domain = "enhancement"
    version = 2  # faster noise/draws: same distribution, other pixels than version 1
    instructions = ("Remove the shadows from this photo.", "Relight the shadowed regions of this image.",
                    "Remove the {count} cast shadow(s) from this picture.")
    count_range: tuple[int, int] = limits(1, 6, (1, 3))
    intensity_range: tuple[float, float] = limits(0.0, 1.0, (0.4, 0.7))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"count": draw_int(rng, self.count_range),
                "intensity": draw_float(rng, self.intensity_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, count: int, intensity: float) -> np.ndarray:
        # RandomShadow's model over the whole image: polygons of 5 uniform random vertices.
        return kernels.cast_shadows(img, kernels.random_polygons(*img.shape[:2], count, 5, rng), intensity)
