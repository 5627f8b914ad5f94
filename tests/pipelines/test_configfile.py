"""The config kit: --set overrides into sections and lists, presets by name from any folder, errors that name
file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from pipelines import Section, load_corpus_config
from pipelines.configfile import PRESET_KINDS, ConfigError, apply_overrides, find_config, load_config, preset_names


class Source(BaseModel):
    uri: str


class Cfg(BaseModel):
    sources: list[Source]
    seed: int = 0


def test_overrides_reach_sections_and_list_items():
    data = {"sources": [{"uri": "a"}, {"uri": "b"}], "out": {"path": "x"}}
    apply_overrides(data, ["sources.1.uri=s3://bucket/p/", "out.path=/tmp/y", "new.leaf=3"], "cfg.yaml")
    assert data == {"sources": [{"uri": "a"}, {"uri": "s3://bucket/p/"}], "out": {"path": "/tmp/y"},
                    "new": {"leaf": 3}}


@pytest.mark.parametrize("override, says", [
    ("sources.2.uri=x", "is a list of 2; use an index from 0 to 1"),
    ("sources.first.uri=x", "is a list of 2"),
    ("seed.deeper=1", "'seed' is not a section"),
    ("novalue", "must look like field.path=value"),
])
def test_bad_overrides_are_errors_for_people(override, says):
    with pytest.raises(ConfigError, match="cfg.yaml") as err:
        apply_overrides({"sources": [{"uri": "a"}, {"uri": "b"}], "seed": 0}, [override], "cfg.yaml")
    assert says in str(err.value)


def test_validation_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - uri: a\nseed: not-a-number\n")
    assert load_config(Cfg, path, ["seed=7"]).seed == 7
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, path)
    assert str(path) in str(err.value) and "seed" in str(err.value)


def test_config_error_is_the_project_error():
    from omnilv.errors import OmniLVError

    assert issubclass(ConfigError, OmniLVError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("value", ["[1, 2", "{a: 1", "a: b: c", "'open"])
def test_a_set_value_that_is_not_yaml_is_a_config_error(value):
    with pytest.raises(ConfigError, match="cfg.yaml") as err:
        apply_overrides({"seed": 0}, [f"seed={value}"], "cfg.yaml")
    assert repr(f"seed={value}") in str(err.value)
    assert "not valid YAML" in str(err.value)


def test_an_unknown_field_is_named_with_the_closest_known_one(tmp_path):
    class Src(Section):
        uri: str

    class Cfg2(Section):
        sources: list[Src]
        seed: int = 0

    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - uri: a\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg2, path, ["sede=1", "sources.0.urii=b"])
    text = str(err.value)
    assert "sede: unknown field; did you mean 'seed'?" in text
    assert "sources.0.urii: unknown field; did you mean 'uri'?" in text


def test_an_existing_relative_path_wins_over_a_preset_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")
    assert find_config("corpus", "quickstart.yaml") == Path("quickstart.yaml")
    assert load_corpus_config("quickstart.yaml").name == "mine"
    assert load_corpus_config("quickstart").name != "mine"  # no file "quickstart" here: the bundled preset
    (tmp_path / "quickstart").mkdir()  # a folder is not a config: the name still means the preset
    assert load_corpus_config("quickstart").sources[0].uri == "samples://"


def test_presets_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for kind in PRESET_KINDS:
        names = preset_names(kind)
        assert names
        for name in names:
            assert find_config(kind, name).is_file() and find_config(kind, f"{name}.yaml") == find_config(kind, name)


def test_a_missing_repo_path_says_the_preset_name_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: relative paths mean this folder
    with pytest.raises(ConfigError) as err:
        load_corpus_config("configs/corpus/omnilv_512.yaml")
    text = str(err.value)
    assert "configs/corpus/omnilv_512.yaml: no such config file" in text and str(tmp_path) in text
    assert "from any folder as just: omnilv_512" in text and "production_40m, quickstart" in text
    with pytest.raises(ConfigError, match="'tiny_stage1' is a train preset, not a corpus one"):
        load_corpus_config("tiny_stage1")
    with pytest.raises(ConfigError, match="no such config file") as err:
        load_corpus_config("nope")
    assert "Corpus presets: lumen_coco, lumen_scenes, omnilv_512" in str(err.value) and "just:" not in str(err.value)
