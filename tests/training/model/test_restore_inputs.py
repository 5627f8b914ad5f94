"""The image a user hands `omnilv restore` is data: a bomb, a lying header or another format is one clear error."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from training.eval.restore import ImageFileError, load_image


def png_header_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width×height pixels (the data is one empty row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(20_000, 20_000), (60_000, 60_000)])  # over our cap; over PIL's bomb error
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_claiming(*size))
    with pytest.raises(ImageFileError, match="bomb.png"):
        load_image(path)


def test_a_format_a_user_image_may_not_be_is_refused(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")  # EPS would run Ghostscript
    with pytest.raises(ImageFileError, match="not a readable"):
        load_image(path)


def test_a_truncated_png_is_an_error_not_a_crash(tmp_path):
    from pipelines import encode_png

    data = encode_png(np.random.default_rng(0).random((32, 32, 3), dtype=np.float32))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError):
        load_image(path)
