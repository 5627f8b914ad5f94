"""Crops are checked for content: a flat crop is redrawn from the sample's own generator, an all-flat source is a
counted ``flat_crop`` skip, a flat exemplar is dropped and counted; all of it deterministic and regenerable."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from corpus_helpers import corpus_files, small_config

from pipelines.build import build_corpus
from pipelines.config import GeometryConfig
from pipelines.read import iter_samples
from pipelines.regenerate import regenerate
from pipelines.synth import Reject, crop_box, draw_crop, sample_rng, texture

CROP = 32
HALF = 128  # columns [0, HALF) of the half-flat source are one grey; the rest is texture


def write_png(path: Path, rgb01: np.ndarray) -> Path:
    u8 = np.clip(np.rint(rgb01 * 255), 0, 255).astype(np.uint8)
    assert cv2.imwrite(str(path), np.ascontiguousarray(u8[..., ::-1]))
    return path


def half_flat() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = np.full((64, 256, 3), 0.5, np.float32)
    img[:, HALF:] = rng.uniform(0.1, 0.9, (64, 256 - HALF, 3))
    return img


def flat_config(out: Path, src: Path, *extra: str):
    return small_config(out, f"sources=[{{uri: '{src}'}}]", f"geometry.crop_size={CROP}", f"geometry.min_size={CROP}",
                        "mixture.tasks={pencil_sketch: 1.0}", "mixture.exemplar_probability=0", *extra)


def test_texture_is_the_luminance_contrast():
    grey = np.full((32, 32, 3), 0.4, np.float32)
    assert texture(grey) == 0.0
    night = grey * 0.05 + np.random.default_rng(0).normal(0, 0.002, grey.shape).astype(np.float32)
    assert texture(night) < 0.01  # a near-black crop with sensor noise is still flat
    stripes = np.zeros((32, 32, 3), np.float32)
    stripes[:, ::2] = 0.1  # a faint but real texture: 0.05 RMS
    assert texture(stripes) == pytest.approx(0.05, abs=1e-6)


def test_draw_crop_redraws_flat_crops_from_the_same_generator():
    img = half_flat()
    geo = GeometryConfig(crop_size=CROP, min_size=CROP, crop_tries=50)
    box, crop, tries = draw_crop(img, geo, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    boxes = [crop_box(img.shape, geo, rng) for _ in range(tries)]
    assert boxes[-1] == box and np.array_equal(crop, img[box[0]:box[0] + CROP, box[1]:box[1] + CROP])
    assert all(b[1] + CROP <= HALF for b in boxes[:-1]) and box[1] + CROP > HALF  # the earlier ones were all flat
    assert draw_crop(img, geo.model_copy(update={"min_texture": 0.0}), np.random.default_rng(3))[2] == 1
    flat = np.full((64, 64, 3), 0.5, np.float32)
    with pytest.raises(Reject) as err:
        draw_crop(flat, geo.model_copy(update={"crop_tries": 3}), np.random.default_rng(0))
    assert err.value.reason == "flat_crop"
    draws = np.random.default_rng(0)
    with pytest.raises(Reject):
        draw_crop(flat, geo.model_copy(update={"crop": "center"}), draws)
    assert draws.bit_generator.state == np.random.default_rng(0).bit_generator.state  # a centre crop: no draw


def test_half_flat_source_is_cropped_on_its_texture(tmp_path, ray_local):
    src = tmp_path / "src"
    src.mkdir()
    path = write_png(src / "half.png", half_flat())
    cfg = flat_config(tmp_path / "a", src, "variants_per_source=16", "geometry.crop_tries=20")
    res = build_corpus(cfg, progress=False, workers=1)
    samples = list(iter_samples(res.root))
    assert len(samples) == 16 and res.manifest.extra["rejects"] == {}  # 0.43^20: no sample runs out of tries
    uri = str(path.resolve())
    redrawn = 0
    for s in samples:
        top, left, h, w = s.meta["crop"]
        assert left + w > HALF and texture(s.target) > 0  # the sketch of a flat crop would be all white
        tries = s.meta.get("crop_tries", 1)
        assert tries > 1 or "crop_tries" not in s.meta
        rng = sample_rng(cfg.output.seed, uri, s.meta["variant"], "sample")
        boxes = [crop_box((64, 256), cfg.geometry, rng) for _ in range(tries)]
        assert boxes[-1] == s.meta["crop"] and all(b[1] + CROP <= HALF for b in boxes[:-1])
        redrawn += tries > 1
    # 43% of the crops are flat, so some of 16 samples redraw (the draws depend on the source's path: 1 - 0.57^16)
    assert redrawn >= 1
    again = build_corpus(flat_config(tmp_path / "b", src, "variants_per_source=16", "geometry.crop_tries=20"),
                         progress=False, workers=2)
    assert corpus_files(again.root) == corpus_files(res.root)
    for s in samples:
        if "crop_tries" in s.meta:
            assert regenerate(res.root, s.key).ok


def test_all_flat_sources_are_counted_skips(tmp_path, ray_local):
    src = tmp_path / "src"
    src.mkdir()
    write_png(src / "grey.png", np.full((48, 48, 3), 0.5, np.float32))
    night = 0.02 + np.random.default_rng(1).normal(0, 0.002, (48, 48, 3))
    write_png(src / "night.png", night.astype(np.float32))
    res = build_corpus(flat_config(tmp_path / "out", src), progress=False, workers=1)
    assert res.manifest.samples == 0 and res.manifest.extra["rejects"] == {"flat_crop": 4}
    report = json.loads(Path(res.report_path).read_text())
    assert report["rejects"] == {"flat_crop": 4}
    assert sorted(Path(u).name for u, _ in report["rejected"]) == ["grey.png#0", "grey.png#1", "night.png#0",
                                                                   "night.png#1"]
    assert {why for _, why in report["rejected"]} == {"flat_crop"}
    assert "flat_crop" in (Path(res.root) / "report.html").read_text()
    # 0 disables the check: the same sources become samples
    off = build_corpus(flat_config(tmp_path / "off", src, "geometry.min_texture=0"), progress=False, workers=1)
    assert off.manifest.samples == 4 and off.manifest.extra["rejects"] == {}


def test_a_flat_exemplar_is_dropped_and_counted(tmp_path, ray_local):
    src = tmp_path / "src"
    src.mkdir()
    write_png(src / "a_texture.png", np.random.default_rng(2).uniform(0, 1, (48, 48, 3)).astype(np.float32))
    write_png(src / "b_flat.png", np.full((48, 48, 3), 0.3, np.float32))
    res = build_corpus(flat_config(tmp_path / "out", src, "mixture.exemplar_probability=1"), progress=False,
                       workers=1)
    samples = list(iter_samples(res.root))
    # the textured photo's two samples keep their query, lose their (flat) exemplar; the flat one is skipped
    assert [Path(s.meta["source"]).name for s in samples] == ["a_texture.png"] * 2
    assert all(s.ref_input is None and "exemplar" not in s.meta for s in samples)
    assert res.manifest.extra["no_exemplar"] == {"flat_crop": 2}
    report = json.loads(Path(res.report_path).read_text())
    assert report["no_exemplar"] == {"flat_crop": 2} and report["rejects"] == {"flat_crop": 2}
