"""Lateral chromatic aberration: red and blue magnified differently about the optical centre."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from degradations import Degradation, draw_float, limits


def radial_shift(channel: np.ndarray, scale: float, cx: float, cy: float) -> np.ndarray:
    """Magnify one channel by ``scale`` about (cx, cy), reflecting at the border."""
    matrix = np.float32([[scale, 0, (1 - scale) * cx], [0, scale, (1 - scale) * cy]])
    h, w = channel.shape
    return cv2.warpAffine(channel, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


@dataclass(frozen=True, kw_only=True)
class ChromaticAberration(Degradation):
    """Colour fringes at edges, growing towards the corners (a cheap lens's lateral CA)."""

    domain = "restoration"
    instructions = (
        "Remove the chromatic aberration from this photo.",
        "Fix the colour fringing along the edges.",
        "Correct the lens's lateral chromatic aberration ({shift:.2%} channel misalignment).",
    )
    #: Relative magnification difference between red and blue (0.005 = 0.5%).
    shift_range: tuple[float, float] = limits(0.0, 0.05, (0.002, 0.012))
    #: Offset of the optical centre from the image centre, as a fraction of the size.
    center_range: tuple[float, float] = limits(-0.3, 0.3, (-0.1, 0.1))

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        # The kit's draws return plain Python numbers: params must survive a JSON round trip unchanged.
        return {"shift": draw_float(rng, self.shift_range),
                "dx": draw_float(rng, self.center_range), "dy": draw_float(rng, self.center_range)}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, shift: float, dx: float,
              dy: float) -> np.ndarray:
        # Uses only its params (never self.*), so a recorded step replays bit for bit.
        h, w = img.shape[:2]
        cx, cy = (0.5 + dx) * (w - 1), (0.5 + dy) * (h - 1)
        out = np.empty_like(img)
        out[..., 0] = radial_shift(np.ascontiguousarray(img[..., 0]), 1.0 + shift, cx, cy)
        out[..., 1] = img[..., 1]
        out[..., 2] = radial_shift(np.ascontiguousarray(img[..., 2]), 1.0 - shift, cx, cy)
        return np.clip(out, 0.0, 1.0, out=out)
