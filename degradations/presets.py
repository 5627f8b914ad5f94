"""Chain presets, registered in the ``omnilv.chains`` entry-point group.

Each preset is a factory returning a :class:`~degradations.compose.Task`; keyword
arguments override nothing structural, only what the docstring lists.
"""

from __future__ import annotations

from degradations.compose import Apply, Chain, Maybe, OneOf, ResizeTo, Shuffle, Task
from degradations.registry import create


def _blur(sigma: tuple[float, float], sinc_p: float) -> OneOf:
    """Real-ESRGAN's blur-kernel draw: iso / aniso / generalized / plateau Gaussians, or a sinc."""
    ks = (7, 21)
    kernels = OneOf(
        (
            Apply(create("gaussian_blur", sigma_range=sigma, kernel_size_range=ks)),
            Apply(create("anisotropic_blur", sigma_x_range=sigma, sigma_y_range=sigma, kernel_size_range=ks)),
            Apply(create("generalized_gaussian_blur", sigma_range=sigma, beta_range=(0.5, 4.0),
                         kernel_size_range=ks)),
            Apply(create("plateau_blur", sigma_range=sigma, beta_range=(1.0, 2.0), kernel_size_range=ks)),
        ),
        (0.45, 0.25, 0.15, 0.15),
    )
    sinc = Apply(create("sinc", kernel_size_range=ks))
    return OneOf((kernels, sinc), (1.0 - sinc_p, sinc_p))


def _resize(scale_down: tuple[float, float], scale_up: tuple[float, float]) -> OneOf:
    """Up 20% / down 70% / keep 10%, as in Real-ESRGAN."""
    return OneOf(
        (Apply(create("resize", scale_range=scale_up)), Apply(create("resize", scale_range=scale_down)), Chain(())),
        (0.2, 0.7, 0.1),
    )


def _noise(sigma: tuple[float, float], poisson: tuple[float, float]) -> OneOf:
    return OneOf(
        (Apply(create("gaussian_noise", sigma_range=sigma, gray_probability=0.4)),
         Apply(create("poisson_noise", scale_range=poisson, gray_probability=0.4))),
        (0.5, 0.5),
    )


def realesrgan(scale: float = 4.0) -> Task:
    """The Real-ESRGAN second-order degradation (Wang et al., 2021) at ``scale``.

    blur → resize → noise → JPEG, then (blur with p=0.8) → resize → noise, then
    the final resize to 1/scale and a sinc filter (p=0.8) in random order with JPEG.
    Noise sigmas are in full-scale units (Real-ESRGAN's 1–30 of 255).
    """
    jpeg = create("jpeg", quality_range=(30, 95))
    first = Chain((_blur((0.2, 3.0), 0.1), _resize((0.15, 1.0), (1.0, 1.5)),
                   _noise((1 / 255, 30 / 255), (0.05, 3.0)), Apply(jpeg)))
    second = Chain((Maybe(_blur((0.2, 1.5), 0.1), 0.8), _resize((0.3, 1.0), (1.0, 1.2)),
                    _noise((1 / 255, 25 / 255), (0.05, 2.5))))
    final_sinc = Maybe(Apply(create("sinc", kernel_size_range=(7, 21))), 0.8)
    final = Shuffle((Chain((ResizeTo(scale), final_sinc)), Apply(jpeg)))
    return Task(
        name="realesrgan",
        domain="restoration",
        node=Chain((first, second, final)),
        instructions=(
            "Restore this low-quality photo to a sharp, clean, high-resolution image.",
            "Remove the blur, noise and compression artifacts and upscale the details.",
            "This image suffered several rounds of degradation; recover the original.",
            "Perform blind super-resolution on this image.",
        ),
    )


def _lowres_compressed(scale: int, quality: tuple[int, int], webp_share: float) -> Chain:
    """Down-sample by ``scale`` (area / bilinear / bicubic), then JPEG or WebP at ``quality``."""
    codec = OneOf((Apply(create("jpeg", quality_range=quality)), Apply(create("webp", quality_range=quality))),
                  (1.0 - webp_share, webp_share))
    return Chain((Apply(create(f"sr_x{scale}")), codec))


def lowres_jpeg_x2(quality: tuple[int, int] = (30, 90), webp_share: float = 0.25) -> Task:
    """x2 super-resolution of a compressed low-resolution image (down-sample, then JPEG or WebP)."""
    return Task("lowres_jpeg_x2", "restoration", _lowres_compressed(2, quality, webp_share), (
        "Upscale this compressed image by 2x and remove its artifacts.",
        "Super-resolve this low-quality picture to twice its size.",
        "Restore a sharp, clean version of this small, compressed photo (quality {quality}).",
    ))


def lowres_jpeg_x4(quality: tuple[int, int] = (30, 90), webp_share: float = 0.25) -> Task:
    """x4 super-resolution of a compressed low-resolution image (down-sample, then JPEG or WebP)."""
    return Task("lowres_jpeg_x4", "restoration", _lowres_compressed(4, quality, webp_share), (
        "Upscale this compressed image by 4x and remove its artifacts.",
        "Super-resolve this low-quality thumbnail to four times its size.",
        "Restore a sharp, clean version of this tiny, compressed photo (quality {quality}).",
    ))


def lowres_noisy_jpeg_x4(noise: tuple[float, float] = (2 / 255, 20 / 255),
                         quality: tuple[int, int] = (30, 90)) -> Task:
    """Blur -> x4 down-sampling -> Gaussian noise -> JPEG: a one-pass classical SR degradation."""
    node = Chain((
        Apply(create("gaussian_blur", sigma_range=(0.2, 1.5), kernel_size_range=(7, 13))),
        Apply(create("sr_x4")),
        Apply(create("gaussian_noise", sigma_range=noise, gray_probability=0.3)),
        Apply(create("jpeg", quality_range=quality)),
    ))
    return Task("lowres_noisy_jpeg_x4", "restoration", node, (
        "Upscale this noisy, compressed image by 4x.",
        "Super-resolve this blurry, noisy, low-quality picture.",
        "Remove the noise and compression artifacts and restore the details at 4x resolution.",
    ))
