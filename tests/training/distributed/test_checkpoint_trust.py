"""Checkpoints are data: resume unpickles nothing but tensors and DeepSpeed's own state (fault matrix #19)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.distributed.conftest import Boom
from training.config import load_train_config
from training.run import run_stage
from training.run.checkpoint import UnsafeCheckpoint, load_weights_only

pytestmark = pytest.mark.slow


def one_worker_cfg(corpus: Path, storage: Path, steps: int, precision: str = "fp32"):
    return load_train_config({
        "data": {"corpus": str(corpus), "resolution": 16, "batch_size": 4},
        "schedule": {"steps": steps, "checkpoint_every": 2, "log_every": 2},
        "deepspeed": {"zero_stage": 2, "precision": precision}, "stage": {"name": "trust"},
        "run": {"workers": 1, "cpus_per_worker": 0.5, "storage_path": str(storage), "max_failures": 0}})


@pytest.fixture(scope="module")
def run(ray_local, tiny_corpus, tmp_path_factory):
    storage = tmp_path_factory.mktemp("trust")
    res = run_stage(one_worker_cfg(tiny_corpus, storage, 2, "bf16"), progress=False)
    return storage, Path(res.checkpoint)


def test_every_file_deepspeed_writes_loads_weights_only(run):
    _, ckpt = run
    files = sorted((ckpt / "ds").glob("*.pt"))
    assert {p.name for p in files} >= {"mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    for p in files:
        safe, full = load_weights_only(str(p)), torch.load(p, weights_only=False)
        assert safe.keys() == full.keys(), p.name


def test_hostile_pickle_is_refused_and_never_runs(run, tiny_corpus, tmp_path):
    storage, ckpt = run
    canary = tmp_path / "canary.txt"
    optim = next((ckpt / "ds").glob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": Boom(str(canary))}, optim)  # what an attacker with write access plants
    with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
        load_weights_only(str(optim))
    with pytest.raises(Exception, match="refusing to load") as failed:
        run_stage(one_worker_cfg(tiny_corpus, storage, 4, "bf16"), progress=False)  # a rerun resumes from it
    assert not canary.exists(), "the planted pickle ran"
    assert optim.name in str(failed.value)  # the worker's message reaches the driver, naming the file
