"""The shared YAML loader: --set overrides into sections and lists, errors that name file and field."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from pipelines.configfile import ConfigError, apply_overrides, load_config


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
