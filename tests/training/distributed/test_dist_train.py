"""Real Ray Train + real DeepSpeed (gloo, CPU) runs on a tiny corpus: each fit() takes tens of seconds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.config import load_train_config
from training.loop import MARKER, is_complete
from training.trainer import train

pytestmark = pytest.mark.slow


def tiny_cfg(corpus: Path, storage: Path, name: str, **over):
    base = {"data": {"corpus": str(corpus), "resolution": 16, "batch_size": 4},
            "optim": {"lr": 3e-3},
            "schedule": {"steps": 4, "checkpoint_every": 2, "log_every": 2, "eval_every": 4},
            "deepspeed": {"zero_stage": 2},
            "stage": {"name": name},
            "run": {"workers": 2, "cpus_per_worker": 0.5, "storage_path": str(storage), "max_failures": 1}}
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return load_train_config(base)


@pytest.fixture(scope="module")
def stage1(ray_local, tiny_corpus, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg(tiny_corpus, storage, "s1")
    return cfg, train(cfg, progress=False)


def test_zero2_two_workers_learn_checkpoint_and_export(stage1):
    cfg, res = stage1
    m = res.metrics
    assert m["step"] == 4 and m["world_size"] == 2 and m["resumed_from"] == 0
    assert math.isfinite(m["loss"])
    assert m["eval_loss"] < m["eval_loss_start"], "loss on the fixed batch did not fall"
    ckpt = Path(res.checkpoint)
    assert is_complete(ckpt, world=2)
    assert sorted(p.name for p in ckpt.glob("COMPLETE.rank*")) == [MARKER.format(rank=r) for r in (0, 1)]
    assert (ckpt / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()  # rank 1's ZeRO shard
    assert (Path(res.export) / "omnilv.json").is_file()
    assert list((Path(cfg.run.storage_path) / "s1" / "tensorboard").glob("events.out.tfevents.*"))


def test_second_run_resumes_at_the_checkpointed_step(stage1, tiny_corpus):
    cfg, _ = stage1
    more = tiny_cfg(tiny_corpus, Path(cfg.run.storage_path), "s1", schedule={"steps": 6})
    m = train(more, progress=False).metrics
    assert m["resumed_from"] == 4 and m["step"] == 6


def test_zero3_killed_worker_resumes_from_last_checkpoint(ray_local, tiny_corpus, tmp_path):
    from training.export import load_network

    cfg = tiny_cfg(tiny_corpus, tmp_path, "z3", deepspeed={"zero_stage": 3},
                   schedule={"steps": 4, "checkpoint_every": 2, "eval_every": 0}, run={"fail_at_step": 3})
    res = train(cfg, progress=False)
    assert (tmp_path / "z3" / "injected-failure").read_text() == "3"  # rank 1 really died at step 3
    assert res.metrics["step"] == 4 and res.metrics["resumed_from"] == 2
    net = load_network(res.export)  # full weights gathered from the ZeRO-3 partitions
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in net.parameters())


def test_stage2_starts_from_stage1_weights_with_exemplars(stage1, tiny_corpus, tmp_path):
    from training.export import load_network

    _, res1 = stage1
    cfg = tiny_cfg(tiny_corpus, tmp_path, "s2", stage={"init_from": res1.export}, data={"use_exemplars": True},
                   schedule={"steps": 2, "eval_every": 0}, run={"workers": 1, "cpus_per_worker": 1, "export": False})
    m = train(cfg, progress=False).metrics
    want = float(sum(p.detach().double().abs().sum() for p in load_network(res1.export).parameters()))
    assert m["init_checksum"] == pytest.approx(want, rel=1e-9)
    assert m["resumed_from"] == 0 and m["step"] == 2
    assert m["exemplar_fraction"] == 1.0  # every tiny-corpus sample carries an exemplar pair
