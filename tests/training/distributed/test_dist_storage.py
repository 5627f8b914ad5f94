"""A run whose storage is ``s3://`` on a real loopback endpoint (moto_server, through s3fs and pyarrow)."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch
from typer.testing import CliRunner

from training.config import load_train_config
from training.run import run_stage as train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_run(ray_local, s3_server, tiny_corpus):
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_server["url"]})
    fs.mkdir("runs-bucket")
    cfg = load_train_config({
        "data": {"corpus": str(tiny_corpus), "resolution": 16, "batch_size": 4},
        "schedule": {"steps": 2, "checkpoint_every": 2, "log_every": 1},
        "optim": {"ema_decay": 0.5}, "stage": {"name": "s3run"},
        "run": {"workers": 1, "cpus_per_worker": 1, "storage_path": "s3://runs-bucket/runs"}})
    return fs, train(cfg, progress=False)


def test_checkpoints_tensorboard_and_export_land_on_s3(s3_run):
    fs, res = s3_run
    assert res.export == "s3://runs-bucket/runs/s3run/export"
    names = [p.removeprefix("runs-bucket/runs/s3run/") for p in fs.find("runs-bucket/runs/s3run")]
    assert "export/omnilv.json" in names and "export/omnilv_modules.safetensors" in names
    assert any(n.startswith("export/backbone/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith("checkpoint_") and n.endswith("COMPLETE.rank0") for n in names)
    assert any(n.startswith("checkpoint_") and n.endswith("ema/rank0.safetensors") for n in names)
    assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names)
    assert not any(n.startswith("s3:") for n in names)
    meta = json.loads(fs.cat_file("runs-bucket/runs/s3run/export/omnilv.json"))
    assert meta["weights"] == "ema" and meta["ema"]["updates"] == 2


def test_init_from_and_restore_read_the_s3_export(s3_run, tmp_path, small_image):
    from omnilv.cli import app
    from training.eval.restore import save_image
    from training.model.export import load_network
    from training.model.omnilv import OmniLV
    from training.run.assemble import init_weights as _init_weights

    _, res = s3_run
    exported = load_network(res.export)
    fresh = OmniLV.from_preset("tiny", **{k: getattr(exported.config, k) for k in ("in_channels",
                                                                                   "cross_attention_dim")})
    _init_weights(fresh, "s3://runs-bucket/runs/s3run")  # a run folder: its export/ is used
    for (name, a), b in zip(exported.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    save_image(small_image[:32, :32], src)
    result = CliRunner().invoke(app, ["restore", "--checkpoint", res.export, "--instruction", "Remove the noise.",
                                      "--steps", "2", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_missing_s3_export_is_a_clear_error(s3_run, tmp_path, small_image):
    from omnilv.cli import app
    from training.eval.restore import save_image

    src = tmp_path / "in.png"
    save_image(small_image[:32, :32], src)
    result = CliRunner().invoke(app, ["restore", "--checkpoint", "s3://runs-bucket/runs/nope/export",
                                      "--instruction", "x", str(src), str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "s3://runs-bucket/runs/nope/export" in result.output and "Traceback" not in result.output


def test_credentials_reach_workers_by_runtime_env_never_the_loop_config(ray_local, tiny_corpus, tmp_path,
                                                                        monkeypatch):
    from training.run import make_trainer

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-s3cr3t")
    cfg = load_train_config({"data": {"corpus": str(tiny_corpus), "resolution": 16},
                             "run": {"storage_path": str(tmp_path)}})
    trainer = make_trainer(cfg)
    assert "canary-s3cr3t" not in repr(trainer.train_loop_config)  # Ray keeps it and may serve it
    assert trainer.run_config.worker_runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "canary-s3cr3t"
