"""Fault matrix #14 and #15: a checkpoint without every rank's marker is never loaded; a driver SIGKILLed mid-run
and rerun with the same name resumes from its last committed checkpoint, its step strictly increasing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.run.checkpoint import MARKER, mark_complete, resolve_resume

OMNILV = Path(sys.executable).with_name("omnilv")


def checkpoint(folder: Path, ranks: tuple[int, ...], world: int = 2) -> Path:
    (folder / "ds").mkdir(parents=True)
    for r in ranks:
        mark_complete(folder, r, world, step=2)
    return folder


def test_a_checkpoint_missing_a_ranks_marker_is_never_loaded(tmp_path):
    older = checkpoint(tmp_path / "checkpoint_000001", (0, 1))
    newest = checkpoint(tmp_path / "checkpoint_000002", (0,))  # rank 1 died while uploading its files
    os.utime(older, (1, 1))
    assert resolve_resume(newest, world=2) == older
    (older / MARKER.format(rank=1)).unlink()
    assert resolve_resume(newest, world=2) is None  # nothing complete: start over, never load a partial one
    assert resolve_resume(checkpoint(tmp_path / "checkpoint_000003", (0, 1)), world=1) is None  # other world size


def committed_steps(run: Path) -> list[int]:
    try:
        results = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(int(r["metrics"]["step"]) for r in results)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_driver_killed_then_rerun_resumes(tiny_corpus, tmp_path):
    args = [str(OMNILV), "train", "tiny_stage1", "--set", f"data.corpus={tiny_corpus}", "--set", "data.resolution=16",
            "--set", "schedule.steps=12", "--set", "schedule.checkpoint_every=2", "--set", "schedule.eval_every=0",
            "--set", "run.storage_path=runs"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    run = tmp_path / "runs" / "tiny_stage1"
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the driver and the Ray it started
    try:
        for _ in range(3000):  # driven by progress: kill once a checkpoint is committed, before the end
            if committed_steps(run) or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert committed_steps(run), f"no checkpoint committed: {proc.stdout.read().decode()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    before = committed_steps(run)
    assert before and before[-1] < 12, "the kill landed after the run had finished"
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "done: step 12" in res.stdout
    after = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    final = max(after, key=lambda r: r["metrics"]["step"])["metrics"]
    assert final["step"] == 12 and final["resumed_from"] == before[-1] > 0  # resumed, never from step 0
