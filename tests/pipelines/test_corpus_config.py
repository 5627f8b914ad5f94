"""The corpus config: presets load, overrides apply, errors name file and field, the digest ignores runtime."""

from __future__ import annotations

import pytest

from pipelines.config import ConfigError, load_corpus_config


def test_presets_load_and_differ_only_where_documented():
    quick, mix, prod = (load_corpus_config(n) for n in (None, "omnilv_512", "production_40m"))
    assert quick.geometry.crop_size == 64 and quick.sources[0].uri == "samples://"
    assert mix.geometry.crop_size == 512 and mix.mixture.default_weight > 0
    # production = omnilv_512 with other sources, output and counts (and the cheaper resume check)
    assert mix.geometry == prod.geometry and mix.mixture == prod.mixture
    assert prod.output.path.startswith("s3://") and prod.sources != mix.sources


def test_overrides_apply_and_crop_bounds_min_size(tmp_path):
    cfg = load_corpus_config(None, ["geometry.crop_size=128", f"output.path={tmp_path}", "variants_per_source=3"])
    assert cfg.geometry.crop_size == 128 and cfg.geometry.min_size == 128
    assert cfg.output.path == str(tmp_path) and cfg.variants_per_source == 3


def test_bad_field_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("geometry:\n  crop_size: -3\noutput:\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_corpus_config(bad)
    text = str(err.value)
    assert str(bad) in text and "geometry.crop_size" in text and "output.colour" in text


def test_digest_ignores_how_and_where_but_not_what(tmp_path):
    base = load_corpus_config(None)
    same = load_corpus_config(None, ["runtime.workers=7", f"output.path={tmp_path}", "s3.region=eu-west-1"])
    other = load_corpus_config(None, ["output.seed=1"])
    assert base.digest() == same.digest() and base.digest() != other.digest()
    assert "path" not in base.resolved()["output"] and "runtime" not in base.resolved()
