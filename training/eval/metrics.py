"""Full-reference image metrics on float RGB images in [0, 1], (H, W, 3).

PSNR is capped at :data:`PSNR_CAP` dB so identical images give a finite number that JSON can hold.
SSIM is scikit-image's (Gaussian-free 7x7 window, smaller on tiny images).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

PSNR_CAP = 100.0


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) images, got {a.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for data range 1; identical images give PSNR_CAP."""
    _check(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return -10.0 * math.log10(mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity over the RGB channels, in [-1, 1]."""
    _check(a, b)
    side = min(a.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images at least 3 pixels on a side, got {a.shape[:2]}")
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0,
                                       channel_axis=2, win_size=win))
