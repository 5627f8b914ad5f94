"""The DeepSpeed dict is generated from the validated config, in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.configfile import ConfigError, preset_names
from training.config import load_train_config
from training.run.ds_config import deepspeed_config

REPO = Path(__file__).resolve().parents[3]


def cfg(**sections):
    return load_train_config(sections)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_batch_arithmetic(stage):
    c = cfg(deepspeed={"zero_stage": stage}, data={"batch_size": 3}, optim={"grad_accum": 4}, run={"workers": 2})
    ds = deepspeed_config(c)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 3 * 4 * 2 == c.global_batch
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)
    assert deepspeed_config(c, world_size=8)["train_batch_size"] == 3 * 4 * 8


def test_precision_clipping_optimizer_and_warmup():
    c = cfg(deepspeed={"precision": "bf16"}, run={"use_gpu": True},
            optim={"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.01, "grad_clip": 0.5, "warmup_steps": 10})
    ds = deepspeed_config(c)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 10
    assert "scheduler" not in deepspeed_config(cfg())


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gpu_runs_take_deepspeeds_own_zero_defaults(stage):
    """No overlap_comm, contiguous-gradient or persistence-threshold overrides on GPU: DeepSpeed's parser resolves
    them to its defaults (overlap on for ZeRO-3; biases and norms under 1e5 elements stay whole)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    c = cfg(deepspeed={"zero_stage": stage, "precision": "bf16"}, run={"use_gpu": True, "workers": 1})
    zero = deepspeed_config(c)["zero_optimization"]
    assert set(zero) <= {"stage", "stage3_gather_16bit_weights_on_model_save"}
    parsed = DeepSpeedConfig(deepspeed_config(c)).zero_config
    assert parsed.overlap_comm == (stage == 3) and parsed.contiguous_gradients
    assert parsed.param_persistence_threshold == 100_000


def test_cpu_runs_keep_only_what_cpu_needs():
    z2 = deepspeed_config(cfg(deepspeed={"zero_stage": 2}))["zero_optimization"]
    z3 = deepspeed_config(cfg(deepspeed={"zero_stage": 3}))["zero_optimization"]
    assert z2 == {"stage": 2, "contiguous_gradients": False}  # an extra copy per step on CPU, nothing gained
    assert z3["stage3_param_persistence_threshold"] == 0  # tiny models: else no parameter is ever partitioned
    assert "overlap_comm" not in z2 and "overlap_comm" not in z3


@pytest.mark.parametrize(("stage", "precision", "accum"), [
    (0, "bf16", None), (1, "bf16", "fp32"), (2, "bf16", "fp32"), (3, "bf16", "fp32"), (3, "fp32", None)])
def test_bf16_gradients_accumulate_in_fp32_where_deepspeed_allows(stage, precision, accum):
    from deepspeed.runtime.config import DeepSpeedConfig

    c = cfg(deepspeed={"zero_stage": stage, "precision": precision}, optim={"grad_accum": 4}, run={"workers": 1})
    ds = deepspeed_config(c)
    assert ds.get("data_types", {}).get("grad_accum_dtype") == accum  # ZeRO-0 + bf16 + fp32: DeepSpeed refuses
    assert DeepSpeedConfig(ds).grad_accum_dtype == accum


def test_offload():
    ds = deepspeed_config(cfg(deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True}))
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam runs the offloaded step


@pytest.mark.parametrize(("sections", "needle"), [
    ({"deepspeed": {"zero_stage": 4}}, "deepspeed.zero_stage"),
    ({"deepspeed": {"precision": "fp16"}}, "deepspeed.precision"),
    ({"deepspeed": {"zero_stage": 2, "offload_params": True}}, "zero_stage: 3"),
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"data": {"nonsense": 1}}, "data.nonsense"),
])
def test_bad_configs_name_the_field(sections, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        cfg(**sections)


def test_shipped_configs_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # presets by name, from outside the repository
    names = preset_names("train")
    assert set(names) >= {"stage1_512", "stage2_incontext", "stage3_1024", "tiny_stage1", "tiny_stage2", "tiny_stage3"}
    assert names == sorted(p.stem for p in (REPO / "configs" / "train").glob("*.yaml"))  # what the package ships
    for name in names:
        c = load_train_config(name)
        deepspeed_config(c)
        if name.startswith("stage"):
            assert c.run.use_gpu and c.deepspeed.precision == "bf16" and c.model.preset == "2b"
            assert c.data.corpus.startswith("s3://")
            assert deepspeed_config(c)["data_types"] == {"grad_accum_dtype": "fp32"}
