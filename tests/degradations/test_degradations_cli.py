"""`omnilv degradations list / preview / check`, run through the root app (where errors become messages)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np
from typer.testing import CliRunner

from degradations import registry
from degradations.base import Degradation, limits
from omnilv.cli import app

runner = CliRunner()


@dataclass(frozen=True, kw_only=True)
class LeaksRanges(Degradation):
    """Breaks the contract: apply reads its instance's range instead of its params."""

    domain = "restoration"
    instructions = ("Fix it.", "Fix it now.", "Fix ({gain:.1f}).")
    gain_range: tuple[float, float] = limits(0.0, 1.0, (0.2, 0.8))

    def sample_params(self, rng):
        return {"gain": float(rng.uniform(*self.gain_range))}

    def apply(self, img, rng, *, gain):
        return img * np.float32(self.gain_range[0])


def test_list_json_has_every_plugin_with_its_ranges():
    result = runner.invoke(app, ["degradations", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert set(by_name) == set(registry.names())
    assert by_name["gaussian_blur"]["params"]["sigma_range"] == [0.2, 3.0]
    assert by_name["sr_x4"]["changes_size"] is True and by_name["sobel"]["target_bits"] == 16
    assert "realesrgan" in data["chains"]


def test_list_table_filters_by_domain():
    result = runner.invoke(app, ["degradations", "list", "--domain", "dense"])
    assert result.exit_code == 0 and "canny" in result.output and "gaussian_noise" not in result.output


def test_preview_writes_a_labelled_sheet(tmp_path, small_image):
    src = tmp_path / "clean.png"
    cv2.imwrite(str(src), cv2.cvtColor((small_image * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    out = tmp_path / "sheet.png"
    result = runner.invoke(app, ["degradations", "preview", "gaussian_noise", "canny", "realesrgan",
                                 "--image", str(src), "--out", str(out), "--draws", "2", "--cell", "96"])
    assert result.exit_code == 0, result.output
    sheet = cv2.imread(str(out))
    assert sheet.shape[1] == 3 * (96 + 4)  # clean + 2 draws
    assert sheet.shape[0] > 3 * 96
    again = tmp_path / "again.png"
    runner.invoke(app, ["degradations", "preview", "gaussian_noise", "canny", "realesrgan", "--image", str(src),
                        "--out", str(again), "--draws", "2", "--cell", "96"])
    assert np.array_equal(cv2.imread(str(again)), sheet)  # same seed, same sheet


def test_preview_unknown_name_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["degradations", "preview", "gausian_noise", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "did you mean 'gaussian_noise'" in result.output


def test_check_exits_1_and_names_the_failed_check():
    result = runner.invoke(app, ["degradations", "check", f"{__name__}:LeaksRanges"])
    assert result.exit_code == 1, result.output
    assert "apply ignores instance ranges" in result.output and "FAIL" in result.output


def test_check_registered_name_passes():
    result = runner.invoke(app, ["degradations", "check", "jpeg", "--all"])
    assert result.exit_code == 0 and "10/10 checks pass" in result.output
