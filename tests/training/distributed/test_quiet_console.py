"""A quiet console (STYLE 19): Ray's chatter stays in its log files, a worker's error still reaches the driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import load_train_config
from training.run import run_stage

REPO = Path(__file__).resolve().parents[3]
#: Lines Ray printed on every quickstart before (PlacementGroupCleaner: 30 to 112 of them).
CHATTER = ("PlacementGroupCleaner", "State API", "Starting execution of Dataset", "Execution plan of Dataset",
           "execution finished", "Deprecat", "Token authentication", "Progress bars disabled", "RayTrainWorker")


def tiny_cfg(corpus: Path, storage: Path, name: str, **over):
    base = {"data": {"corpus": str(corpus), "resolution": 16, "batch_size": 4},
            "schedule": {"steps": 2, "checkpoint_every": 2, "log_every": 1},
            "stage": {"name": name},
            "run": {"workers": 2, "cpus_per_worker": 0.5, "storage_path": str(storage), "max_failures": 0}}
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return load_train_config(base)


#: What the check runs, in a fresh interpreter (as the CLI is): earlier tests' logging set-up must not decide it.
NOTICE_CHECK = """
import logging
from pipelines.runtime import NOTICES, quiet_console

quiet_console()
for name, prefix in NOTICES.items():
    logging.getLogger(name).warning(prefix + " (a notice)")
    logging.getLogger(name).warning("something else")
data = logging.getLogger("ray.data._internal.execution.streaming_executor")
data.info("Starting execution of Dataset x")
data.warning("a warning of Ray Data")
print(len(NOTICES))
"""


def test_ray_notices_and_ray_data_info_stay_off_the_console():
    """What ``ensure_ray`` sets on the driver before ``ray.init`` (without starting Ray here)."""
    res = subprocess.run([sys.executable, "-c", NOTICE_CHECK], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    err = res.stderr
    assert "(a notice)" not in err and err.count("something else") == int(res.stdout.strip())
    assert "Starting execution" not in err and "a warning of Ray Data" in err


@pytest.mark.slow
def test_a_workers_error_reaches_the_driver(ray_local, tiny_corpus, tmp_path):
    """16 samples per worker, batches of 32: the worker raises; its message (not Ray's log) tells the user."""
    from ray.train import TrainingFailedError

    cfg = tiny_cfg(tiny_corpus, tmp_path, "too_small", data={"batch_size": 32})
    with pytest.raises(TrainingFailedError) as info:
        run_stage(cfg, progress=False)
    text = str(info.value)
    assert "this worker's dataset shard has no full batch of 32" in text and "Traceback" in text
    assert any("RAY_LOG_TO_DRIVER" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [4, 32], ids=["trains", "worker_fails"])
def test_train_cli_prints_ours_and_a_workers_error_but_little_of_ray(tiny_corpus, tmp_path, batch):
    """``omnilv train`` in its own process on its own local Ray, as a user runs it; with batches of 32 every worker
    raises (16 samples each), and its message must reach this console (rich wraps it: compared without line breaks)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_LOG_TO_DRIVER")}
    sets = [f"data.corpus={tiny_corpus}", f"run.storage_path={tmp_path}", "data.resolution=16", "schedule.steps=4",
            "schedule.checkpoint_every=4", "schedule.eval_every=0", f"data.batch_size={batch}", "run.max_failures=0"]
    cmd = [sys.executable, "-m", "omnilv", "train", "configs/train/tiny_stage1.yaml"]
    cmd += [a for s in sets for a in ("--set", s)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    noisy = [line for line in lines if any(c in line for c in CHATTER)]
    assert not noisy, "\n".join(noisy)
    if batch == 32:
        flat = " ".join(out.split())
        assert res.returncode != 0 and "this worker's dataset shard has no full batch of 32" in flat, out
        return
    assert res.returncode == 0, out
    assert any("train" in line and "4/4" in line for line in lines) and lines[-1].startswith("done: step 4"), out
    assert len(lines) <= 12, out
