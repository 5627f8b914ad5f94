"""The corpus config: presets load (by name, from any folder), overrides apply, errors name file and field, the
digest ignores runtime."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import BaseModel

from pipelines import Section
from pipelines.config import ConfigError, CorpusConfig, SourceSpec, load_corpus_config
from pipelines.configfile import preset_names


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


def test_every_corpus_preset_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = preset_names("corpus")
    assert set(names) >= {"quickstart", "omnilv_512", "production_40m"}
    for name in names:
        assert load_corpus_config(name).digest() == load_corpus_config(f"{name}.yaml").digest()
    assert load_corpus_config(None).digest() == load_corpus_config("quickstart").digest()


def test_the_default_digest_is_pinned():
    # What a resume compares: a refactor of the schema (its base class, its docs) must not change it. Change the pin
    # only with a change of defaults that is meant to make old corpora resume-incompatible.
    assert CorpusConfig().digest() == "462c53b30d00c6a291151628d1748d398f62b69a4579d18080558ac3d577ff92"


def sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every section nested in it (through ``X``, ``list[X]``, ``X | None``)."""
    found = [model]
    for field in model.model_fields.values():
        for t in (field.annotation, *get_args(field.annotation)):
            if isinstance(t, type) and not get_args(t) and issubclass(t, BaseModel):
                found += sections(t)
    return found


def test_every_section_is_a_section_and_every_field_has_a_doc():
    """One base class, one convention: the docstring under each field is its description."""
    found = sections(CorpusConfig)
    assert SourceSpec in found and len(found) == 7  # the root and its six sections
    for section in found:
        assert issubclass(section, Section), section.__name__
        assert all(f.description for f in section.model_fields.values()), section.__name__


def test_lumen_presets_read_coco_sources_for_the_five_vision_tasks():
    from pipelines.synth import get_task, resolve_mixture

    vision = {"detection", "instance_segmentation", "pose", "grounding", "referring_segmentation"}
    scenes, coco = load_corpus_config("lumen_scenes"), load_corpus_config("lumen_coco")
    for cfg in (scenes, coco):
        assert set(cfg.mixture.tasks) == vision and cfg.mixture.exemplar_probability == 0
        assert all(s.coco and s.images for s in cfg.sources)
        assert {get_task(n).domain for n, _ in resolve_mixture(cfg)} == {"vision-centric"}
    assert (scenes.geometry.crop, scenes.geometry.crop_size, scenes.geometry.resize_short) == ("center", 128, 0)
    assert scenes.sources[0].coco.endswith("instances_train.json")  # the val split stays out of the corpus
    small = load_corpus_config("lumen_scenes", ["geometry.crop_size=64"])  # scenes of another size
    assert small.geometry.min_size == 64
    assert coco.geometry.crop_size == 512 and coco.output.path.startswith("s3://")
    assert all(s.coco.startswith("s3://") and s.images.startswith("s3://") for s in coco.sources)
    assert coco.sources[0].refs_split == "train"


@pytest.mark.parametrize("source,problem", [
    ("{coco: a.json}", "images: a COCO source needs"),
    ("{coco: a.json, images: img, uri: /data}", "uri: a COCO source lists"),
    ("{uri: /data, refs: r.json}", "refs: only for a COCO source"),
])
def test_coco_source_fields_are_checked(tmp_path, source, problem):
    with pytest.raises(ConfigError) as err:
        load_corpus_config(None, [f"sources=[{source}]"])
    assert "sources.0" in str(err.value) and problem in str(err.value)
