"""Bad and unusual inputs: each one is converted correctly or rejected with its reason code (no Ray)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipelines.config import GeometryConfig
from pipelines.synth import Reject, decode_image

GEO = GeometryConfig(crop_size=32, min_size=32, max_pixels=10_000_000)


def photo(h: int = 48, w: int = 64) -> np.ndarray:
    """A real photo crop as uint8 RGB (non-symmetric, so a wrong rotation shows)."""
    from degradations.samples import default_image

    return np.ascontiguousarray(np.rint(default_image()[100:100 + h, 150:150 + w] * 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bomb(w: int, h: int) -> bytes:
    """A tiny valid-looking PNG whose header claims w x h pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    return encode(Image.fromarray(photo()), "JPEG", quality=95)


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """file name -> (bytes, expected reason)."""
    return {
        "zero.png": (b"", "empty"),
        "notes.jpg": (b"this is a text file, not a JPEG\n" * 20, "not_image"),
        "truncated.jpg": (jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated"),
        "bomb.png": (png_bomb(40_000, 40_000), "too_large"),
        "tiny.png": (encode(Image.fromarray(photo(16, 16)), "PNG"), "too_small"),
        # formats PIL knows but a source may not be, under a listed extension: refused before their codec runs
        # (an EPS would run Ghostscript)
        "figure.png": (encode(Image.fromarray(photo()), "EPS"), "not_image"),
        "anim.jpg": (encode(Image.fromarray(photo()), "GIF"), "not_image"),
        "scan.tif": (encode(Image.fromarray(photo()), "PPM"), "not_image"),
    }


def good_inputs() -> dict[str, bytes]:
    rgb = photo()
    rgba = np.dstack([rgb, np.where(np.arange(64)[None, :] < 32, 255, 0).repeat(48, 0).astype(np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held sideways: rotate 90 degrees clockwise to view
    ok16, png16 = cv2.imencode(".png", (rgb[..., ::-1].astype(np.uint16) * 257 + 3))
    assert ok16
    return {
        "cmyk.jpg": encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=100),
        "deep16.png": png16.tobytes(),
        "grey.png": encode(Image.fromarray(rgb).convert("L"), "PNG"),
        "alpha.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "rotated.jpg": encode(Image.fromarray(rgb), "JPEG", quality=100, exif=exif),
    }


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_inputs_get_their_reason(name):
    data, reason = bad_inputs()[name]
    with pytest.raises(Reject) as err:
        decode_image(data, GEO)
    assert err.value.reason == reason


def test_good_inputs_convert_correctly():
    rgb = photo().astype(np.float32) / 255
    files = good_inputs()
    out = {n: decode_image(d, GEO)[0] for n, d in files.items()}
    for img in out.values():
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
        assert img.min() >= 0.0 and img.max() <= 1.0
    # CMYK comes back as the RGB it encodes (JPEG at q100: within a few levels)
    assert np.abs(out["cmyk.jpg"] - rgb).mean() < 0.02
    # 16-bit keeps its full precision
    expected16 = (photo().astype(np.float32) * 257 + 3) / 65535
    np.testing.assert_allclose(out["deep16.png"], expected16, atol=1e-6)
    # grey is replicated to three equal channels
    g = out["grey.png"]
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    # alpha: opaque half unchanged, transparent half white
    np.testing.assert_allclose(out["alpha.png"][:, :32], rgb[:, :32], atol=1e-6)
    assert np.all(out["alpha.png"][:, 32:] == 1.0)
    # palette equals PIL's own RGB conversion
    pal = np.asarray(Image.open(io.BytesIO(files["palette.png"])).convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(out["palette.png"], pal)
    # EXIF orientation applied: upright shape and pixels equal PIL's exif_transpose
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(files["rotated.jpg"]))), np.float32) / 255
    assert out["rotated.jpg"].shape == (64, 48, 3)
    np.testing.assert_array_equal(out["rotated.jpg"], upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(photo()), "PNG", exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(decode_image(data, GEO)[0], upright)
