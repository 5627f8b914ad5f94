"""Lumen's target maps: exact construction (peak, radius rule, max-composite, size channels) and round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from degradations import (
    PluginError,
    box_maps,
    decode_boxes,
    decode_mask,
    decode_points,
    draw_gaussian,
    find_peaks,
    gaussian_radius,
    mask_maps,
    point_maps,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# -- the radius rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("h", "w", "radius"), [
    (40, 40, 3),     # case 2 binds: (160 - sqrt(160² - 16·480)) / 8 = 3.267
    (10, 20, 1),     # case 2: (60 - sqrt(3600 - 960)) / 8 = 1.078 (case 1 gives 1.227, case 3 1.314)
    (20, 10, 1),
    (100, 200, 10),  # case 2: (600 - sqrt(360000 - 96000)) / 8 = 10.77
    (3, 3, 0),       # (12 - sqrt(144 - 43.2)) / 8 = 0.245
    (0, 0, 0),
])
def test_gaussian_radius_matches_hand_computed_roots(h, w, radius):
    assert gaussian_radius(h, w) == radius


def _ious(h: float, w: float, r: float) -> tuple[float, float, float]:
    """IoU of the box with the box moved by r: both corners shifted, both in, both out."""
    shifted = (h - r) * (w - r) / (2 * h * w - (h - r) * (w - r))
    inside = (h - 2 * r) * (w - 2 * r) / (h * w)
    outside = h * w / ((h + 2 * r) * (w + 2 * r))
    return shifted, inside, outside


@pytest.mark.parametrize(("h", "w"), [(40, 40), (12, 90), (77, 31), (300, 512), (8, 8)])
@pytest.mark.parametrize("overlap", [0.5, 0.7, 0.9])
def test_radius_is_the_largest_that_keeps_the_iou(h, w, overlap):
    r = gaussian_radius(h, w, overlap)
    assert min(_ious(h, w, r)) >= overlap - 1e-9
    assert min(_ious(h, w, r + 1)) < overlap  # floored: one more pixel breaks the bound


def test_radius_rejects_a_bad_overlap():
    with pytest.raises(PluginError, match="min_overlap"):
        gaussian_radius(10, 10, 1.0)


# -- drawing ------------------------------------------------------------------------------------------
def test_gaussian_peak_is_exactly_one_at_the_integer_centre_and_cut_to_its_window():
    heat = np.zeros((30, 40), np.float32)
    draw_gaussian(heat, 10.9, 5.2, 3)
    assert heat[5, 10] == 1.0 and np.argwhere(heat == 1.0).tolist() == [[5, 10]]
    sigma = 7 / 6
    for d in (1, 2, 3):
        expected = np.float32(math.exp(-d * d / (2 * sigma * sigma)))
        assert heat[5, 10 + d] == heat[5, 10 - d] == heat[5 + d, 10] == expected
    assert heat[5, 14] == 0 and heat[9, 10] == 0 and heat[8, 13] > 0
    assert np.count_nonzero(heat) == 49 and heat.dtype == np.float32


def test_gaussians_max_composite_and_clip_at_the_border():
    heat = np.full((20, 20), 0.7, np.float32)
    draw_gaussian(heat, 0.0, 19.5, 4)  # centre on the bottom-left pixel: the window is cut, no error
    assert heat[19, 0] == 1.0 and heat[19, 4] == 0.7 and heat[0, 0] == 0.7  # never below what was there
    assert heat[19, 1] > 0.7


def test_box_maps_are_the_max_of_each_box_and_sizes_follow_the_largest_gaussian():
    shape, boxes = (48, 64), np.array([[4, 4, 34, 40], [20, 10, 44, 30], [21, 11, 60, 31]], np.float32)
    alone = np.stack([box_maps(shape, b[None]) for b in boxes])  # (3, H, W, 3)
    maps = box_maps(shape, boxes)
    assert maps.dtype == np.float32 and maps.shape == (48, 64, 3)
    assert np.array_equal(maps[..., 0], alone[..., 0].max(axis=0))
    g = alone[..., 0]
    best = np.argmax(g, axis=0)  # first box wins a tie, as in box_maps
    top = np.take_along_axis(g, best[None], 0)[0]
    h = (boxes[:, 3] - boxes[:, 1]) / 48
    w = (boxes[:, 2] - boxes[:, 0]) / 64
    on = top >= 0.5
    assert np.array_equal(maps[..., 1][on], h[best][on].astype(np.float32))
    assert np.array_equal(maps[..., 2][on], w[best][on].astype(np.float32))
    assert not maps[..., 1:][~on].any()
    centre = (int((boxes[0, 1] + boxes[0, 3]) / 2), int((boxes[0, 0] + boxes[0, 2]) / 2))
    assert maps[centre][0] == 1.0 and maps[centre][1] == np.float32(36 / 48) and maps[centre][2] == np.float32(30 / 64)


def test_box_maps_are_deterministic_clip_boxes_and_skip_empty_ones():
    boxes = np.array([[-10, -6, 20, 14], [30, 5, 30, 25]], np.float32)  # cut by the border; no width
    a, b = box_maps((40, 50), boxes), box_maps((40, 50), boxes.copy())
    assert a.tobytes() == b.tobytes()
    assert np.argwhere(a[..., 0] == 1.0).tolist() == [[7, 10]]  # centre of the clipped box [0, 0, 20, 14]
    assert a[7, 10, 1] == np.float32(14 / 40) and a[7, 10, 2] == np.float32(20 / 50)
    assert not box_maps((40, 50), np.zeros((0, 4))).any()
    with pytest.raises(PluginError, match=r"\(N, 4\)"):
        box_maps((40, 50), np.zeros((2, 3)))


def test_point_maps_take_one_radius_or_one_per_point_and_no_sizes():
    maps = point_maps((30, 30), [[3.7, 4.2], [20.0, 20.0], [35.0, 5.0], [-1.0, 3.0]], [1, 4, 2, 2])
    assert np.argwhere(maps[..., 0] == 1.0).tolist() == [[4, 3], [20, 20]]  # the two outside are left out
    assert maps[4, 5, 0] == 0 and maps[20, 24, 0] > 0 and maps[20, 25, 0] == 0
    assert not maps[..., 1:].any()
    same = point_maps((30, 30), [[20.0, 20.0]], 4)
    assert np.array_equal(same[15:26, 15:26], maps[15:26, 15:26])


def test_mask_maps_heat_is_the_mask_and_sizes_sit_at_the_box_centre():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 8:50] = True
    mask[12, 9] = False
    maps = mask_maps((40, 60), mask, [8, 10, 50, 30])
    assert np.array_equal(maps[..., 0], mask.astype(np.float32))
    assert maps[20, 29, 1] == np.float32(20 / 40) and maps[20, 29, 2] == np.float32(42 / 60)
    assert np.array_equal(maps[..., 1:], box_maps((40, 60), [[8, 10, 50, 30]])[..., 1:])
    with pytest.raises(PluginError, match="40x61"):
        mask_maps((40, 61), mask, [8, 10, 50, 30])


# -- decoding -----------------------------------------------------------------------------------------
def test_find_peaks_orders_thresholds_limits_and_counts_a_plateau_once():
    heat = np.zeros((12, 12), np.float32)
    heat[2, 2], heat[8, 9], heat[5, 5] = 0.9, 0.5, 0.2
    heat[9:12, 0:3] = 0.7  # a 3x3 plateau touching the border
    ys, xs, scores = find_peaks(heat)
    assert list(zip(ys.tolist(), xs.tolist(), strict=True)) == [(2, 2), (9, 0), (8, 9)]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert len(find_peaks(heat, threshold=0.0)[0]) == 4 and len(find_peaks(heat, k=2)[0]) == 2
    assert len(find_peaks(heat, threshold=0.9)[0]) == 0  # strictly above the threshold
    with pytest.raises(PluginError, match=r"\(H, W\)"):
        find_peaks(np.zeros((4, 4, 3)))


def _quantise16(maps: np.ndarray) -> np.ndarray:
    return (np.round(maps * 65535).astype(np.uint16) / np.float32(65535)).astype(np.float32)


def test_boxes_round_trip_through_their_maps_and_16_bit_storage():
    rng = np.random.default_rng(3)
    h, w = 160, 200
    centres = [(x, y) for y in range(30, 140, 27) for x in range(30, 180, 31)]  # centres >= 27 px apart
    sizes = rng.uniform(20, 80, (len(centres), 2))
    boxes = np.array([[x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2] for (x, y), (bw, bh) in
                      zip(rng.uniform(-3, 3, (len(centres), 2)) + centres, sizes, strict=True)])
    boxes = np.clip(boxes, 0, [w, h, w, h])
    for maps in (box_maps((h, w), boxes), _quantise16(box_maps((h, w), boxes))):
        found, scores = decode_boxes(maps)
        assert len(found) == len(boxes) and (scores > 0.99).all()
        for box in boxes:
            best = max(found, key=lambda f, box=box: iou(f, box))
            assert iou(best, box) > 0.9
            assert np.abs(best - box).max() <= 0.5 + 2e-3  # the centre pixel's centre: off by at most half a pixel


def test_points_round_trip_within_a_pixel():
    rng = np.random.default_rng(5)
    pts = np.array([(x, y) for y in range(5, 60, 9) for x in range(5, 80, 9)], float) + rng.uniform(0, 4, (1, 2))
    found, _ = decode_points(point_maps((64, 84), pts, 2)[..., 0])
    assert len(found) == len(pts)
    dist = np.sqrt(((found[:, None] - pts[None]) ** 2).sum(-1)).min(axis=0)
    assert dist.max() < 1.0


def test_masks_round_trip_exactly():
    yy, xx = np.mgrid[0:50, 0:70]
    mask = (xx - 30) ** 2 / 400 + (yy - 25) ** 2 / 144 <= 1
    maps = _quantise16(mask_maps((50, 70), mask, [10, 13, 51, 38]))
    assert np.array_equal(decode_mask(maps[..., 0]), mask)
    peaks = box_maps((50, 70), [[10, 13, 51, 38]])[..., :1]  # the size channels sit where the box's peak is
    (box,), _ = decode_boxes(np.concatenate([peaks, maps[..., 1:]], axis=2))
    assert iou(box, np.array([10, 13, 51, 38])) > 0.9
