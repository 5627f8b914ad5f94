"""`omnilv train` config handling and the quickstart's held-out split (fast; no training here)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from omnilv.cli import app
from training.quickstart import Row, split_sources, summary


def test_train_dry_run_prints_the_deepspeed_config_with_overrides():
    res = CliRunner().invoke(app, ["train", "configs/train/tiny_stage3.yaml", "--dry-run",
                                   "--set", "optim.grad_accum=2", "--set", "run.workers=3"])
    assert res.exit_code == 0, res.output
    ds = json.loads(res.output)
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 2 * 2 * 3


def test_train_bad_config_is_an_error_for_people():
    res = CliRunner().invoke(app, ["train", "configs/train/tiny_stage1.yaml", "--set", "deepspeed.zero_stage=5"])
    assert res.exit_code == 2
    assert "deepspeed.zero_stage" in res.output and "Traceback" not in res.output


def test_quickstart_holds_out_whole_photos():
    train, held = split_sources()
    assert held and len(train) > 3 * len(held)
    assert not set(train) & set(held)
    assert split_sources() == (train, held)


def test_summary_gain_is_mean_of_per_image_gains():
    t = summary([Row("a", 20.0, 23.0), Row("a", 30.0, 29.0), Row("b", 10.0, 14.0)])
    assert t["a"]["gain_db"] == 1.0 and t["b"]["gain_db"] == 4.0
    assert list(t)[-1] == "overall" and t["overall"]["n"] == 3
    assert abs(t["overall"]["gain_db"] - 2.0) < 1e-12
