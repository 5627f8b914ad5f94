"""Lumen's target maps: build them from annotations, decode them back (pure numpy, deterministic).

A target map is ``(H, W, 3)`` float32 in ``[0, 1]`` at the crop's resolution (stored as a 16-bit PNG):

* channel 0 ``heat``: the instruction-aligned heatmap. Each object is a Gaussian peak
  ``exp(-(dx² + dy²) / (2σ²))``, ``σ = (2r + 1) / 6``, cut to the window ``[-r, r]`` around the integer pixel
  ``(int(cx), int(cy))`` (for a box, its centre), so that pixel is exactly ``1.0``. Overlapping peaks are
  max-composited, never summed. For referring segmentation the heat is the instance's mask as 0/1 instead.
* channel 1 ``height``: box height / crop height, and channel 2 ``width``: box width / crop width, written at
  the pixels where that box's Gaussian is the largest of all boxes and at least 0.5 (ties go to the earlier
  box); 0 elsewhere. Point maps leave both at 0.

The radius ``r`` of a box's peak is :func:`gaussian_radius` of its height and width: CenterNet's rule
(from CornerNet), the largest radius by which the corners may move while the moved box keeps IoU >= 0.7 with
the box, in the worst of the three cases (both corners shift the same way, both move in, both move out).
This module solves the three quadratics exactly; the reference code's ``(b + sqrt(b² - 4ac)) / 2`` typo gives
larger radii, which violate that IoU bound.

Coordinates are pixels of the crop, ``x`` to the right and ``y`` down; pixel ``(x, y)`` covers
``[x, x + 1) × [y, y + 1)``. Boxes are clipped to the crop before drawing and a box with no area left is
not drawn; a point outside the crop is not drawn. Decoders read peaks as the pixel centre ``(x + 0.5, y + 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from degradations.base import PluginError

Shape = tuple[int, ...]


# -- construction ---------------------------------------------------------------------------------
def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> int:
    """The peak radius of an ``h`` x ``w`` box: the smallest of the three CenterNet roots, floored, >= 0.

    The three cases, each a quadratic in ``r`` at IoU exactly ``min_overlap`` (``o``):

    1. both corners shift by ``r`` the same way: ``r² - (h + w) r + h w (1 - o) / (1 + o) = 0``;
    2. both corners move in by ``r``: ``4 r² - 2 (h + w) r + (1 - o) h w = 0``;
    3. both corners move out by ``r``: ``4 o r² + 2 o (h + w) r - (1 - o) h w = 0``.

    Cases 1 and 2 take the smaller root, case 3 the positive one.
    """
    if not 0.0 < min_overlap < 1.0:
        raise PluginError(f"gaussian_radius: min_overlap {min_overlap} is not in (0, 1)")
    h, w = max(float(h), 0.0), max(float(w), 0.0)
    o = float(min_overlap)
    b1, c1 = h + w, h * w * (1 - o) / (1 + o)
    r1 = (b1 - math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - o) * h * w
    r2 = (b2 - math.sqrt(max(b2 * b2 - 4 * a2 * c2, 0.0))) / (2 * a2)
    a3, b3, c3 = 4 * o, 2 * o * (h + w), -(1 - o) * h * w
    r3 = (-b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / (2 * a3)
    return max(0, math.floor(min(r1, r2, r3)))


def _window(shape: Shape, cx: float, cy: float, radius: int) -> tuple[slice, slice, np.ndarray] | None:
    """The part of the Gaussian window that falls in ``shape``: (rows, cols, values), or None if it misses."""
    h, w = shape[:2]
    x, y, r = int(cx), int(cy), int(radius)
    if r < 0:
        raise PluginError(f"draw_gaussian: radius {radius} is negative")
    x0, x1, y0, y1 = max(x - r, 0), min(x + r + 1, w), max(y - r, 0), min(y + r + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    sigma = (2 * r + 1) / 6
    dy = np.arange(y0 - y, y1 - y, dtype=np.float64)[:, None]
    dx = np.arange(x0 - x, x1 - x, dtype=np.float64)[None, :]
    values = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)).astype(np.float32)
    return slice(y0, y1), slice(x0, x1), values


def draw_gaussian(heat: np.ndarray, cx: float, cy: float, radius: int) -> None:
    """Max-composite one Gaussian peak into ``heat`` (H, W) in place; ``(int(cx), int(cy))`` becomes 1.0."""
    win = _window(heat.shape, cx, cy, radius)
    if win is not None:
        rows, cols, values = win
        np.maximum(heat[rows, cols], values, out=heat[rows, cols])


def _as_boxes(boxes: np.ndarray | Sequence) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise PluginError(f"boxes: expected an (N, 4) xyxy array, got shape {arr.shape}")
    return arr


def _clip_boxes(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.clip(boxes, 0.0, [w, h, w, h])


def _draw_boxes(maps: np.ndarray, boxes: np.ndarray, heat: bool) -> None:
    """Box peaks into ``maps[..., 0]`` (when ``heat``) and their sizes into channels 1-2, in place."""
    h, w = maps.shape[:2]
    owner = np.zeros((h, w), np.float32)  # the largest Gaussian of any box so far, per pixel
    for x0, y0, x1, y1 in _clip_boxes(boxes, h, w):
        bw, bh = x1 - x0, y1 - y0
        if bw <= 0 or bh <= 0:
            continue
        win = _window((h, w), (x0 + x1) / 2, (y0 + y1) / 2, gaussian_radius(bh, bw))
        if win is None:
            continue
        rows, cols, g = win
        wins = (g > owner[rows, cols]) & (g >= 0.5)
        maps[rows, cols, 1][wins] = np.float32(bh / h)
        maps[rows, cols, 2][wins] = np.float32(bw / w)
        np.maximum(owner[rows, cols], g, out=owner[rows, cols])
    if heat:
        np.maximum(maps[..., 0], owner, out=maps[..., 0])


def _empty(shape: Shape) -> np.ndarray:
    h, w = int(shape[0]), int(shape[1])
    return np.zeros((h, w, 3), np.float32)


def box_maps(shape: Shape, boxes: np.ndarray | Sequence) -> np.ndarray:
    """Target maps of ``boxes`` (N, 4) xyxy in an image of ``shape`` (H, W[, C]): peaks and size channels."""
    maps = _empty(shape)
    _draw_boxes(maps, _as_boxes(boxes), heat=True)
    return maps


def point_maps(shape: Shape, points: np.ndarray | Sequence, radius: int | Sequence[int]) -> np.ndarray:
    """Target maps of ``points`` (N, 2) xy: a peak of ``radius`` (one for all, or one per point) at each."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    radii = np.broadcast_to(np.asarray(radius, dtype=np.int64), (len(pts),))
    maps = _empty(shape)
    h, w = maps.shape[:2]
    heat = np.ascontiguousarray(maps[..., 0])
    for (x, y), r in zip(pts, radii, strict=True):
        if 0 <= x < w and 0 <= y < h:
            draw_gaussian(heat, x, y, int(r))
    maps[..., 0] = heat
    return maps


def mask_maps(shape: Shape, mask: np.ndarray, box: np.ndarray | Sequence) -> np.ndarray:
    """Target maps of one instance: heat = ``mask`` as 0/1, size channels at ``box``'s centre as in box_maps."""
    maps = _empty(shape)
    mask = np.asarray(mask)
    if mask.shape != maps.shape[:2]:
        raise PluginError(f"mask_maps: the mask is {mask.shape[0]}x{mask.shape[1]} but the image is "
                          f"{maps.shape[0]}x{maps.shape[1]}")
    maps[..., 0] = mask.astype(bool)
    _draw_boxes(maps, _as_boxes(np.asarray(box, dtype=np.float64).reshape(-1, 4)), heat=False)
    return maps


# -- decoding -------------------------------------------------------------------------------------
def find_peaks(heat: np.ndarray, threshold: float = 0.3, k: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima of ``heat`` (H, W) in a 3x3 window, above ``threshold``: (ys, xs, scores), best first.

    A plateau counts once: a pixel equal to a neighbour that comes before it in raster order is not a peak.
    Equal scores keep raster order. At most ``k`` peaks.
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise PluginError(f"find_peaks: expected an (H, W) heatmap, got shape {heat.shape}")
    h, w = heat.shape
    pad = np.pad(heat, 1, constant_values=-np.inf)
    keep = heat > threshold
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            other = pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            earlier = dy < 0 or (dy == 0 and dx < 0)
            keep &= heat > other if earlier else heat >= other
    ys, xs = np.nonzero(keep)  # raster order
    scores = heat[ys, xs]
    order = np.argsort(-scores, kind="stable")[: max(int(k), 0)]
    return ys[order], xs[order], scores[order]


def decode_boxes(maps: np.ndarray, threshold: float = 0.3, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (M, 4) xyxy and scores (M,) from target maps (H, W, 3): a box per heat peak, sized by channels 1-2."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[2] != 3:
        raise PluginError(f"decode_boxes: expected (H, W, 3) maps, got shape {maps.shape}")
    h, w = maps.shape[:2]
    ys, xs, scores = find_peaks(maps[..., 0], threshold, k)
    cx, cy = xs + 0.5, ys + 0.5
    bh, bw = maps[ys, xs, 1].astype(np.float64) * h, maps[ys, xs, 2].astype(np.float64) * w
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).reshape(-1, 4)
    return _clip_boxes(boxes, h, w).astype(np.float32), scores


def decode_points(heat: np.ndarray, threshold: float = 0.3, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Points (M, 2) xy (pixel centres) and scores (M,) of the peaks of ``heat`` (H, W)."""
    ys, xs, scores = find_peaks(heat, threshold, k)
    return np.stack([xs + 0.5, ys + 0.5], axis=1).reshape(-1, 2).astype(np.float32), scores


def decode_mask(heat: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The mask (H, W) bool of the pixels whose heat is at least ``threshold``."""
    return np.asarray(heat) >= threshold
