"""The training config: presets by name from any folder, typed ``model.overrides`` and ``model.objective`` (a typo
fails at load time, before Ray, naming the file and the dotted field), and the objective defined once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import torch
from pydantic import BaseModel

from pipelines import ConfigError, CorpusConfig, Section
from training.config import ModelOverrides, ObjectiveConfig, TrainConfig, load_train_config
from training.model import FlowMatching, OmniLV, OmniLVConfig
from training.model.export import ExportError, export_model, load_exported
from training.run.export_final import fp32_copy


def sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every section nested in it (through ``X``, ``list[X]``, ``X | None``)."""
    found = [model]
    for field in model.model_fields.values():
        for t in (field.annotation, *get_args(field.annotation)):
            if isinstance(t, type) and not get_args(t) and issubclass(t, BaseModel):
                found += sections(t)
    return found


def test_both_schemas_share_one_base_and_one_doc_convention():
    found = sections(TrainConfig) + sections(CorpusConfig) + [OmniLVConfig]
    assert ModelOverrides in found and ObjectiveConfig in found
    for section in found:
        assert issubclass(section, Section), section.__name__
        undocumented = [n for n, f in section.model_fields.items() if not f.description]
        assert not undocumented, f"{section.__name__}: {undocumented}"


@pytest.mark.parametrize(("override", "field", "hint"), [
    ("model.objective.timestep_samplng=uniform", "model.objective.timestep_samplng", "'timestep_sampling'"),
    ("model.overrides.num_layerz=3", "model.overrides.num_layerz", "'num_layers'"),
    ("model.overrides.in_channels=4", "model.overrides.in_channels", "known: patch_size"),  # follows the codec
    ("model.objective.text_dropout=1.5", "model.objective.text_dropout", "less than or equal to 1"),
    ("model.objective.logit_std=0", "model.objective.logit_std", "greater than 0"),
    ("model.overrides.num_layers=0", "model.overrides.num_layers", "greater than or equal to 1"),
    ("model.overrides.adapter_layers=middle", "model.overrides.adapter_layers", "first_half"),
    ("model.preset=huge", "model.preset", "known: tiny, small, base, 2b"),
    ("model.overrides.hidden_size=36", "model", "divisible by 4"),  # checked against the preset's 2 heads
])
def test_a_bad_model_field_fails_at_load_time_naming_file_and_field(override, field, hint):
    with pytest.raises(ConfigError) as err:
        load_train_config("tiny_stage1", [override])
    text = str(err.value)
    assert "tiny_stage1.yaml: invalid config" in text and f"  - {field}: " in text and hint in text


def test_a_set_value_that_is_not_yaml_is_a_config_error():
    says = r"tiny_stage1\.yaml: override 'optim\.betas=\[0\.9, 0\.95': .*not valid YAML"
    with pytest.raises(ConfigError, match=says):
        load_train_config("tiny_stage1", ["optim.betas=[0.9, 0.95"])


def test_presets_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("tiny_stage1", ["optim.lr=3e-4"])
    assert cfg.stage.name == "tiny_stage1" and cfg.optim.lr == 3e-4
    assert load_train_config(Path("tiny_stage1.yaml")) == load_train_config("tiny_stage1")  # what the CLI passes
    with pytest.raises(ConfigError, match="from any folder as just: tiny_stage1"):
        load_train_config("configs/train/tiny_stage1.yaml")  # relative to this folder, not the repository


def test_a_relative_path_in_the_current_folder_wins_over_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_stage1.yaml").write_text("stage: {name: mine}\n")
    assert load_train_config("tiny_stage1.yaml").stage.name == "mine"
    assert load_train_config("tiny_stage1").stage.name == "tiny_stage1"  # no file of that exact name: the preset


def test_only_the_overrides_given_replace_the_presets_values():
    cfg = load_train_config({"model": {"preset": "tiny", "overrides": {"hidden_size": 64, "num_attention_heads": 4}}})
    fields = cfg.model.network_fields(cross_attention_dim=384, in_channels=4)
    assert fields["hidden_size"] == 64 and fields["num_attention_heads"] == 4 and fields["num_layers"] == 2
    assert fields["cross_attention_dim"] == 384 and fields["in_channels"] == 4 and fields["preset"] == "tiny"
    # what a Ray worker gets: the config as JSON, validated again
    again = TrainConfig.model_validate(json.loads(cfg.model_dump_json()))
    assert again.model.network_fields() == cfg.model.network_fields()


def test_build_flow_uses_the_typed_overrides_and_objective():
    from training.run import build_flow

    cfg = load_train_config("quickstart", ["model.objective.logit_mean=0.5", "model.overrides.num_layers=3"])
    flow, codec, text = build_flow(cfg, torch.device("cpu"))
    assert flow.objective == cfg.model.objective and flow.objective.timestep_sampling == "uniform"
    c = flow.net.config
    assert (c.hidden_size, c.num_attention_heads, c.adapter_dim, c.num_layers) == (64, 4, 32, 3)
    assert (c.in_channels, c.cross_attention_dim) == (codec.channels, text.dim)


def test_the_objective_is_one_config_given_whole_or_as_keywords():
    net = OmniLV.from_preset("tiny")
    objective = ObjectiveConfig(timestep_sampling="uniform", logit_mean=0.3, logit_std=1.5, text_dropout=0.2)
    assert FlowMatching(net, objective).objective == objective == FlowMatching(net, **objective.model_dump()).objective
    assert FlowMatching(net).objective == ObjectiveConfig()
    with pytest.raises(ValueError, match="logit_std"):
        FlowMatching(net, logit_std=-1.0)
    with pytest.raises(ValueError, match="logit_meen"):
        FlowMatching(net, logit_meen=0.0)
    with pytest.raises(TypeError, match="not both"):
        FlowMatching(net, objective, text_dropout=0.0)


def test_the_objective_round_trips_through_an_export_and_the_fp32_copy(tmp_path):
    objective = ObjectiveConfig(timestep_sampling="logit_normal", logit_mean=-0.4, logit_std=1.7, text_dropout=0.25)
    flow = FlowMatching(OmniLV.from_preset("tiny"), objective)
    assert fp32_copy(flow.to(torch.bfloat16)).objective == objective
    export_model(flow.float(), "tiny", "pixel", tmp_path / "model")
    loaded, *_ = load_exported(tmp_path / "model")
    assert loaded.objective == objective and (loaded.logit_mean, loaded.logit_std) == (-0.4, 1.7)
    meta_path = tmp_path / "model" / "omnilv.json"
    meta = json.loads(meta_path.read_text())
    meta["flow"] = {"timestep_sampling": "uniform", "text_dropout": 0.2}  # an export from before logit_*
    meta_path.write_text(json.dumps(meta))
    assert load_exported(tmp_path / "model")[0].objective == ObjectiveConfig(timestep_sampling="uniform",
                                                                               text_dropout=0.2)
    meta["flow"] = {"timestep_sampling": "cosine"}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"omnilv\.json: flow: .*timestep_sampling"):
        load_exported(tmp_path / "model")


@pytest.mark.parametrize("override,message", [
    ("data.buckets=[[64, 64], [64, 128]]", "one data.resolution"),
    ("data.latents=cache/", "data.latents"),
    ("data.use_exemplars=true", "no exemplar pairs"),
])
def test_a_lumen_config_refuses_what_a_lumen_run_cannot_use(override, message):
    from pipelines import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_train_config("tiny_lumen_stage1", [override])
    assert load_train_config("tiny_lumen_stage1").model.recipe == "lumen"
