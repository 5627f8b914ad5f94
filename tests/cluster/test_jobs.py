"""The real omnilv commands through the Jobs API of a real Ray head: a tiny corpus build, then a tiny
training run on that corpus. The jobs join the head's cluster through RAY_ADDRESS, as on a real cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from omnilv.cli import app

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_corpus_job(ray_head, tmp_path_factory):
    """Submits a 4-sample corpus build (32² crops of the bundled photos) and returns (result, corpus dir)."""
    root = tmp_path_factory.mktemp("cluster-corpus")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "sources": [{"uri": "samples://", "limit": 2}], "variants_per_source": 2,
        "geometry": {"crop_size": 32, "min_size": 32}, "mixture": {"tasks": {"gaussian_noise": 1.0, "jpeg": 1.0}},
        "output": {"path": str(root / "corpus"), "samples_per_shard": 2}}))
    result = runner.invoke(app, ["cluster", "submit", "--address", ray_head["address"],
                                 "--", "omnilv", "corpus", "build", str(config), "--quiet"],
                           env={"RAY_AUTH_TOKEN": ray_head["token"]})
    return result, root / "corpus"


def test_corpus_build_runs_as_a_job(tiny_corpus_job):
    result, corpus = tiny_corpus_job
    assert result.exit_code == 0, result.output
    assert "4 samples in 2 shards" in result.output  # the build's own summary, streamed from the job
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["shards"]) == 4


def test_training_stage_runs_as_a_job(ray_head, tiny_corpus_job, tmp_path):
    result, corpus = tiny_corpus_job
    assert result.exit_code == 0, result.output
    config = REPO / "configs" / "train" / "tiny_stage1.yaml"
    r = runner.invoke(app, ["cluster", "submit", "--address", ray_head["address"], "--", "omnilv", "train",
                            str(config), "--set", f"data.corpus={corpus}", "--set", f"run.storage_path={tmp_path}",
                            "--set", "run.workers=1", "--set", "run.max_failures=0", "--set", "data.batch_size=2",
                            "--set", "schedule.steps=2", "--set", "schedule.checkpoint_every=2",
                            "--set", "schedule.eval_every=100", "--set", "schedule.log_every=1",
                            "--set", "run.export=false"],
                      env={"RAY_AUTH_TOKEN": ray_head["token"]})
    assert r.exit_code == 0, r.output
    assert "SUCCEEDED" in r.output
    # Ray Train's storage_path received the stage's checkpoint (what a rerun would resume from).
    assert list(tmp_path.glob("tiny_stage1/checkpoint_*")), sorted(str(p) for p in tmp_path.rglob("*"))[:20]


def test_failing_corpus_build_reports_failure_with_its_logs(ray_head):
    r = runner.invoke(app, ["cluster", "submit", "--address", ray_head["address"], "--",
                            "omnilv", "corpus", "build", "nonexistent.yaml"], env={"RAY_AUTH_TOKEN": ray_head["token"]})
    assert r.exit_code != 0
    assert "nonexistent.yaml" in r.output and "FAILED" in r.output


@pytest.mark.parametrize("preset", ["lumen_stage1", "lumen_stage2"])
def test_the_lumen_stage_configs_are_accepted_by_a_job_on_the_head(ray_head, preset):
    """What a RayJob of `omnilv cluster render kuberay --job lumen-stage1` runs, validated on a real head: the
    preset resolves there by name and its DeepSpeed config is printed (--dry-run: no GPUs, LLaVA or S3 needed)."""
    r = runner.invoke(app, ["cluster", "submit", "--address", ray_head["address"], "--", "omnilv", "train", preset,
                            "--dry-run"], env={"RAY_AUTH_TOKEN": ray_head["token"]})
    assert r.exit_code == 0, r.output
    assert "SUCCEEDED" in r.output and '"zero_optimization"' in r.output and '"bf16"' in r.output
