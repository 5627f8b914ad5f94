"""Run paths are absolute before any worker sees them, and a rerun that would learn otherwise is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import ConfigError
from training.config import load_train_config
from training.run.record import RECORD, absolute, check_rerun


def cfg_of(storage: str, corpus: str = "corpus/q", **over):
    base = {"data": {"corpus": corpus, "resolution": 16, "batch_size": 4},
            "schedule": {"steps": 2, "checkpoint_every": 2, "log_every": 1},
            "stage": {"name": "rec"}, "run": {"workers": 1, "cpus_per_worker": 1, "storage_path": storage}}
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return load_train_config(base)


def test_relative_paths_mean_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute(cfg_of("runs", stage={"init_from": "stage1"}))
    assert cfg.run.storage_path == str(tmp_path / "runs") and cfg.data.corpus == str(tmp_path / "corpus" / "q")
    assert cfg.stage.init_from == str(tmp_path / "runs" / "stage1" / "export")  # a bare name: a run beside it
    assert absolute(cfg_of("s3://b/runs", "s3://b/c")).data.corpus == "s3://b/c"


def test_a_rerun_may_run_longer_but_not_learn_otherwise(tmp_path):
    cfg = absolute(cfg_of(str(tmp_path)))
    check_rerun(cfg)
    assert json.loads((tmp_path / "rec" / RECORD).read_text())["config"]["data"]["corpus"] == cfg.data.corpus
    check_rerun(absolute(cfg_of(str(tmp_path), schedule={"steps": 10}, run={"max_failures": 3})))
    with pytest.raises(ConfigError, match=r"(?s)data.latents: '' -> .*run.name=rec-2") as exc:
        check_rerun(absolute(cfg_of(str(tmp_path), data={"latents": str(tmp_path / "lat")})))
    assert "schedule" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"run.workers: 1 -> 2"):  # ZeRO checkpoints of another world size
        check_rerun(absolute(cfg_of(str(tmp_path), run={"workers": 2})))
    (tmp_path / "rec" / RECORD).write_text("not json")
    with pytest.raises(ConfigError, match="not a run record"):
        check_rerun(cfg)


@pytest.mark.slow
def test_train_from_another_folder_exports_where_it_says(ray_local, tiny_corpus, tmp_path, monkeypatch):
    from training.run import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(tiny_corpus)
    res = run_stage(cfg_of("runs", "data"), progress=False)
    assert res.export == str(tmp_path / "runs" / "rec" / "export")
    assert (Path(res.export) / "omnilv.json").is_file()
    assert list((tmp_path / "runs" / "rec" / "tensorboard").glob("events.out.tfevents.*"))
