"""Plugins do what their names say, measured on real or purpose-built images."""

from __future__ import annotations

import numpy as np

from degradations import kernels, registry

GREY = np.full((64, 96, 3), 0.5, np.float32)


def run(name: str, img: np.ndarray, seed: int = 0, **params) -> np.ndarray:
    return registry.create(name).apply(img, np.random.default_rng(seed), **params)


def hf_energy(img: np.ndarray) -> float:
    """Mean absolute difference between horizontal and vertical neighbours."""
    return float(np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean())


def step_image(h: int = 48, w: int = 80, col: int = 40) -> np.ndarray:
    img = np.full((h, w, 3), 0.2, np.float32)
    img[:, col:] = 0.8
    return img


def test_gaussian_noise_adds_sigma(astronaut):
    out = run("gaussian_noise", GREY, sigma=0.05, gray=False)
    assert abs(float((out - GREY).std()) - 0.05) < 0.003
    gray = run("gaussian_noise", GREY, sigma=0.05, gray=True)
    assert np.array_equal(gray[..., 0], gray[..., 2])
    assert hf_energy(run("gaussian_noise", astronaut, sigma=0.1, gray=False)) > 2 * hf_energy(astronaut)


def test_standard_normal_table_is_gaussian():
    z = kernels.standard_normal((400_000,), np.random.default_rng(0))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((np.abs(z) < 1).mean()) - 0.6827) < 0.005


def test_poisson_noise_grows_with_brightness():
    ramp = np.repeat(np.linspace(0.05, 0.95, 96, dtype=np.float32)[None, :, None], 256, 0).repeat(3, 2)
    out = run("poisson_noise", ramp, scale=1.0, gray=False)
    dark, bright = (out - ramp)[:, :20].std(), (out - ramp)[:, -20:].std()
    assert bright > 2 * dark


def test_salt_pepper_hits_the_requested_fraction():
    out = run("salt_pepper_noise", GREY, amount=0.1, salt_ratio=0.5)
    white, black = (out == 1).all(-1).mean(), (out == 0).all(-1).mean()
    assert 0.08 < white + black < 0.12 and 0.3 < white / (white + black) < 0.7


def test_blurs_lower_high_frequency_energy(small_image):
    base = hf_energy(small_image)
    cases = {"gaussian_blur": {"sigma": 1.5, "kernel_size": 9},
             "anisotropic_blur": {"sigma_x": 2.0, "sigma_y": 0.8, "rotation": 0.5, "kernel_size": 11},
             "generalized_gaussian_blur": {"sigma": 1.5, "beta": 2.0, "kernel_size": 11},
             "plateau_blur": {"sigma": 1.5, "beta": 1.5, "kernel_size": 11},
             "motion_blur": {"kernel_size": 9, "angle": 30.0}, "defocus_blur": {"radius": 3.0}}
    for name, params in cases.items():
        assert hf_energy(run(name, small_image, **params)) < 0.7 * base, name


def test_motion_blur_smears_along_its_angle():
    stripes = np.zeros((64, 64, 3), np.float32)
    stripes[:, ::4] = 1.0  # vertical lines: a horizontal smear kills them, a vertical one keeps them
    horizontal = run("motion_blur", stripes, kernel_size=9, angle=0.0)
    vertical = run("motion_blur", stripes, kernel_size=9, angle=90.0)
    assert horizontal.std() < 0.3 * stripes.std() and vertical.std() > 0.8 * stripes.std()


def test_sinc_rings_where_gaussian_does_not():
    img = step_image()
    ringing = run("sinc", img, cutoff=0.8, kernel_size=21)
    smooth = run("gaussian_blur", img, sigma=2.0, kernel_size=21)
    assert ringing[:, 40:].max() > 0.8 + 0.01 and ringing[:, :40].min() < 0.2 - 0.01
    assert smooth.max() <= 0.8 + 1e-5 and smooth.min() >= 0.2 - 1e-5


def test_jpeg_q10_has_8x8_blocking(astronaut):
    def blockiness(img: np.ndarray) -> float:
        d = np.abs(np.diff(kernels.luminance(img), axis=1))
        return float(d[:, 7::8].mean() / np.delete(d, np.s_[7::8], axis=1).mean())

    assert blockiness(run("jpeg", astronaut, quality=10)) > 1.3 * blockiness(astronaut)
    assert blockiness(run("jpeg", astronaut, quality=95)) < 1.1 * blockiness(astronaut)


def test_lossy_codecs_lose_more_at_low_quality(small_image):
    for name in ("jpeg", "webp"):
        errs = [float(np.abs(run(name, small_image, quality=q) - small_image).mean()) for q in (90, 10)]
        assert errs[1] > 1.5 * errs[0] > 0, name


def test_sr_downsampling_sizes(small_image):
    h, w = small_image.shape[:2]
    assert run("sr_x4", small_image, interpolation="bicubic").shape == (h // 4, w // 4, 3)
    assert run("sr_x2", small_image, interpolation="area").shape == (h // 2, w // 2, 3)
    assert run("resize", small_image, interpolation="area", scale=0.5, height=10, width=20).shape == (10, 20, 3)
    assert run("resize", small_image, interpolation="bilinear", scale=0.5).shape == (h // 2, w // 2, 3)


def test_dark_tasks_lower_mean_luminance(small_image):
    lum = kernels.luminance(small_image).mean()
    assert kernels.luminance(run("low_light", small_image, gamma=2.0, gain=0.3, noise=0.01)).mean() < 0.35 * lum
    # 1.5 stops in linear light is a factor 2**(-1.5/2.2) on gamma-encoded values.
    ratio = kernels.luminance(run("underexposure", small_image, stops=1.5)).mean() / lum
    assert abs(ratio - 2 ** (-1.5 / 2.2)) < 0.03


def test_exposure_contrast_and_colour(small_image):
    lum = kernels.luminance
    assert lum(run("overexposure", small_image, stops=1.5)).mean() > 1.3 * lum(small_image).mean()
    assert lum(run("low_contrast", small_image, factor=0.3)).std() < 0.35 * lum(small_image).std()
    grey = run("desaturation", small_image, factor=0.0)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() < 1e-5
    cast = run("color_cast", GREY, red=1.2, green=1.0, blue=0.6)
    assert np.allclose(cast[0, 0], [0.6, 0.5, 0.3], atol=1e-5)


def test_hdr_compression_flattens_tones_and_lifts_shadows(small_image):
    lum, out = kernels.luminance(small_image), kernels.luminance(run("hdr_compression", small_image, strength=0.8))
    assert out.std() < 0.7 * lum.std()
    dark = lum < np.percentile(lum, 10)
    assert out[dark].mean() > lum[dark].mean() + 0.05


def test_vignetting_darkens_corners_not_centre():
    out = run("vignetting", GREY, strength=0.6, radius=1.0)
    assert out[0, 0, 0] < 0.3 and abs(out[32, 48, 0] - 0.5) < 0.01


def test_haze_is_thicker_far_away(small_image):
    out = run("haze", small_image, beta=2.0, airlight=0.9, horizon=0.5)
    top, bottom = np.abs(out - small_image)[:20].mean(), np.abs(out - small_image)[-20:].mean()
    assert top > bottom and kernels.luminance(out).std() < kernels.luminance(small_image).std()


def test_rain_streaks_run_along_their_angle():
    grey = np.full((128, 128, 3), 0.5, np.float32)
    residual = kernels.luminance(run("rain", grey, density=0.01, length=21, angle=90.0, opacity=0.8))
    residual = residual - residual.mean()
    vertical = float((residual[3:] * residual[:-3]).mean())  # lag 3: beyond the anti-aliasing blur
    horizontal = float((residual[:, 3:] * residual[:, :-3]).mean())
    assert vertical > 5 * abs(horizontal)


def test_inpaint_boxes_fill_holes_and_leave_the_rest(small_image):
    out = run("inpaint_boxes", small_image, count=2, size=0.3, fill="white")
    holes = (out == 1.0).all(-1) & ~(small_image == 1.0).all(-1)
    assert 0.02 < holes.mean() < 0.2
    assert np.array_equal(out[~holes], small_image[~holes])


def test_bayer_demosaic_is_exact_on_flat_colour_and_not_on_detail(small_image):
    flat = np.empty((32, 32, 3), np.float32)
    flat[:] = (0.7, 0.4, 0.2)
    assert np.allclose(run("bayer_mosaic", flat, pattern="RGGB"), flat, atol=1e-5)
    assert np.abs(run("bayer_mosaic", small_image, pattern="GBRG") - small_image).mean() > 0.005


def test_pixelation_makes_constant_blocks(small_image):
    out = run("pixelation", small_image, block=8)
    assert np.array_equal(out[0:8, 0:8], np.broadcast_to(out[0, 0], (8, 8, 3)))


def test_canny_is_binary_and_on_gradient_maxima(astronaut):
    out = run("canny", astronaut, low=50, high=120, sigma=1.0)
    assert set(np.unique(out)) <= {0.0, 1.0} and np.array_equal(out[..., 0], out[..., 1])
    edges = out[..., 0] > 0
    grad = run("sobel", astronaut, ksize=3, sigma=1.0)[..., 0]
    assert grad[edges].mean() > 3 * grad.mean()
    step = run("canny", step_image(), low=50, high=120, sigma=1.0)[..., 0]
    assert set(np.nonzero(step[10])[0]) <= {39, 40}


def test_sobel_and_laplacian_peak_at_the_step():
    for name, params in (("sobel", {"ksize": 3, "sigma": 0.0}), ("laplacian", {"sigma": 1.0})):
        out = run(name, step_image(), **params)[..., 0]
        assert abs(int(np.argmax(out[20])) - 39.5) <= 2, name
        assert out[:, :30].max() < 0.05 and out[:, 50:].max() < 0.05, name


def test_segmentation_and_superpixels_reduce_colours(small_image):
    seg = run("grey_segmentation", small_image, classes=3)
    assert len(np.unique(seg)) <= 3
    sp = run("slic_superpixels", small_image, segments=40, compactness=10.0)
    assert len(np.unique(sp.reshape(-1, 3), axis=0)) <= 80


def test_posterize_has_at_most_2_to_the_bits_levels(small_image):
    for bits in (1, 2, 3):
        out = run("posterize", small_image, bits=bits)
        assert all(len(np.unique(out[..., c])) <= 2**bits for c in range(3))


def test_edge_preserving_smoothing_flattens_texture(small_image):
    out = run("edge_preserving_smoothing", small_image, sigma_s=60.0, sigma_r=0.4)
    assert hf_energy(out) < 0.8 * hf_energy(small_image)


def test_halftone_ink_matches_darkness(small_image):
    out = run("halftone", small_image, cell=6, mode="grey")[..., 0]
    assert abs(float(1 - out.mean()) - float(1 - kernels.luminance(small_image).mean())) < 0.08
    assert ((out < 0.1) | (out > 0.9)).mean() > 0.6  # mostly pure ink or paper


def test_line_art_is_dark_lines_on_white(small_image):
    out = run("line_art", small_image, sigma=1.2, sharpness=40.0)[..., 0]
    assert np.median(out) > 0.9 and (out < 0.5).mean() > 0.01
