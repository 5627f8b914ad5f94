"""``omnilv rehearse``: the production configs run end to end in miniature, and a joint that does not connect is
named before anything runs (DESIGN.md, "The production path")."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import training.rehearse as rehearse_mod
from omnilv.cli import app
from pipelines import find_config
from training.rehearse import CORPORA, JointError, plan

STAGES = ("stage1", "stage2", "stage3")


def broken_copy(tmp_path: Path, preset: str, name: str, **changes: dict) -> str:
    """A copy of the bundled ``preset`` training config with ``changes`` ({section: {field: value}}) applied."""
    data = yaml.safe_load(find_config("train", preset).read_text())
    for section, fields in changes.items():
        data[section].update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_plan_only_lists_the_joints_from_the_configs():
    out = subprocess.run([sys.executable, "-m", "omnilv", "rehearse", "--plan-only"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    joints = out.stdout.split("joints", 1)[1]
    assert "s3://omnilv-corpora/production_40m, s3://omnilv-runs/stage1/export  ->  stage2" in joints
    assert "s3://omnilv-corpora/production_1024, s3://omnilv-runs/stage2/export  ->  stage3" in joints
    assert "rehearsal passed" not in out.stdout  # nothing ran

    steps = {s.name: s for s in plan()}
    assert steps["stage2"].inputs[1] == steps["stage1"].outputs[0]
    assert steps["stage3"].inputs == ["s3://omnilv-corpora/production_1024", steps["stage2"].outputs[0]]


def test_a_stage_that_starts_from_nowhere_is_named(tmp_path):
    stage2 = broken_copy(tmp_path, "stage2_incontext", "stage2", stage={"init_from": "nowhere"})
    with pytest.raises(JointError, match=r"stage2.*stage\.init_from 'nowhere'.*not the export of an earlier stage"):
        plan(CORPORA, ("stage1_512", stage2, "stage3_1024"))


def test_stage3_on_the_512_corpus_is_named(tmp_path):
    stage3 = broken_copy(tmp_path, "stage3_1024", "stage3", data={"corpus": "s3://omnilv-corpora/production_40m"})
    with pytest.raises(JointError, match=r"stage3.*production_40m.*upsampled"):
        plan(CORPORA, ("stage1_512", "stage2_incontext", stage3))


def test_a_broken_joint_is_one_line_and_exit_2(tmp_path, monkeypatch):
    stage2 = broken_copy(tmp_path, "stage2_incontext", "stage2", stage={"init_from": "nowhere"})
    bundled = plan
    monkeypatch.setattr(rehearse_mod, "plan", lambda: bundled(CORPORA, ("stage1_512", stage2, "stage3_1024")))
    res = CliRunner().invoke(app, ["rehearse", "--plan-only", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "init_from" in lines[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_the_full_rehearsal_on_a_local_s3(tmp_path):
    out = tmp_path / "rehearsal"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-m", "omnilv", "rehearse", "--s3", "local", "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    print(res.stdout)  # the table, shown by pytest -rP
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "rehearsal passed: 7 steps" in res.stdout

    table = res.stdout.split("rehearsal", 2)[-1]
    for name in ("corpus 512²", "corpus 1024²", *STAGES, "restore", "eval"):
        assert name in table
    assert table.count(" ok ") >= 7 and "FAILED" not in table, res.stdout

    steps = {s["step"]: s for s in json.loads((out / "rehearsal.json").read_text())}
    assert len(steps) == 7 and all(s["status"] == "ok" for s in steps.values()), steps
    for name in STAGES:
        assert all(math.isfinite(x) for x in steps[name]["loss"]), steps[name]
    assert steps["stage3"]["inputs"] == ["s3://omnilv-corpora/production_1024", "s3://omnilv-runs/stage2/export"]
    assert (out / "restored.png").stat().st_size > 0
    results = out / "eval" / "results.json"
    assert results.is_file() and json.loads(results.read_text())
