"""The bundled photographs load as the same pixels OpenCV decodes, and quietly."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from degradations import bgr_to_rgb01, load_rgb, sample_paths


def test_pngs_load_as_opencv_decodes_them():
    pngs = [p for p in sample_paths() if p.suffix.lower() == ".png"]
    assert len(pngs) > 10
    for path in pngs:
        assert np.array_equal(load_rgb(path), bgr_to_rgb01(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))), path


def test_loading_every_sample_prints_nothing():
    """libpng's "iCCP: … invalid rendering intent" (page.png) used to reach the console of scenes and previews."""
    code = "from degradations import load_rgb, sample_paths\nfor p in sample_paths(): load_rgb(p)\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr == "" and res.stdout == "", res.stderr
