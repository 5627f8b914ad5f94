"""Labelled sheets: a header names each column, a caption names each row, images keep their pixels."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import labelled_sheet
from pipelines.sheets import CAPTION, HEADER


def ink(region: np.ndarray) -> int:
    return int((region < 128).any(-1).sum())


def test_layout_header_caption_and_cells():
    red = np.zeros((8, 4, 3), np.float32)
    red[..., 0] = 1.0
    sheet = labelled_sheet([([red, None], "gaussian_noise: PSNR 20.0 -> 24.0 dB")], ["input", "restored"], cell=32)
    assert sheet.dtype == np.uint8 and sheet.shape == (HEADER + 1 + CAPTION + 32, 64, 3)
    header, caption = sheet[:HEADER], sheet[HEADER + 1:HEADER + 1 + CAPTION]
    assert ink(header[:, :32]) > 0 and ink(header[:, 32:]) > 0, "each column is named"
    assert ink(caption) > 0, "the row is captioned"
    cells = sheet[HEADER + 1 + CAPTION:]
    # 8x4 enlarged ×4 (nearest) to 32x16, centred: columns 8..24 red, the rest white; the None cell blank
    assert (cells[:, 8:24] == [255, 0, 0]).all() and (cells[:, :8] == 255).all() and (cells[:, 32:] == 255).all()


def test_a_row_with_the_wrong_number_of_images_is_an_error():
    with pytest.raises(ValueError, match="2 images for 3 columns"):
        labelled_sheet([([np.zeros((4, 4, 3)), None], "x")], ["a", "b", "c"])


def test_long_captions_are_cut_to_the_width():
    sheet = labelled_sheet([([np.ones((4, 4, 3))], "x" * 500)], ["only"], cell=40)
    assert sheet.shape[1] == 40
