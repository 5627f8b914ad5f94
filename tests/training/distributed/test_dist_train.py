"""Real Ray Train + real DeepSpeed (gloo, CPU) runs on a tiny corpus: each fit() takes tens of seconds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.config import load_train_config
from training.run import MARKER, is_complete
from training.run import run_stage as train

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
    cfg = tiny_cfg(tiny_corpus, storage, "s1", optim={"ema_decay": 0.9})
    return cfg, train(cfg, progress=False)


def ema_shares(ckpt: Path) -> list[dict[str, torch.Tensor]]:
    """Each rank's saved EMA share in a checkpoint folder, by rank."""
    from safetensors.torch import load_file

    shares = [load_file(str(p)) for p in sorted((ckpt / "ema").glob("rank*.safetensors"))]
    return [{k.removeprefix("net."): v for k, v in share.items()} for share in shares]  # FlowMatching.net.*


def ema_average(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's EMA joined from every rank's share, by the network's parameter names."""
    from training.run.ema import read_average

    return {k.removeprefix("net."): v for k, v in read_average(ckpt).items()}  # FlowMatching.net.*


def test_zero2_two_workers_learn_checkpoint_and_export(stage1):
    cfg, res = stage1
    m = res.metrics
    assert m["step"] == 4 and m["world_size"] == 2 and m["resumed_from"] == 0
    assert m["epoch"] == 0  # 4 steps × 2 workers × 4 = the 32 samples once
    assert math.isfinite(m["loss"])
    assert m["eval_loss"] < m["eval_loss_start"], "loss on the fixed batch did not fall"
    ckpt = Path(res.checkpoint)
    assert is_complete(ckpt, world=2)
    assert sorted(p.name for p in ckpt.glob("COMPLETE.rank*")) == [MARKER.format(rank=r) for r in (0, 1)]
    assert (ckpt / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()  # rank 1's ZeRO shard
    assert (Path(res.export) / "omnilv.json").is_file()
    assert list((Path(cfg.run.storage_path) / "s1" / "tensorboard").glob("events.out.tfevents.*"))


def test_zero2_ema_is_sharded_by_fp32_partition_and_exported(stage1):
    """Each rank averages the pieces of the fp32 masters in its ZeRO partition; the export holds the joined average,
    not the raw weights."""
    import json

    from training.model.export import load_network

    _, res = stage1
    shares = ema_shares(Path(res.checkpoint))
    assert len(shares) == 2 and all(shares)
    net = load_network(res.export)
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    held = sum(v.numel() for share in shares for v in share.values())
    assert held == sum(p.numel() for p in trainable.values()), "ranks averaged some values twice, or none"
    average = ema_average(Path(res.checkpoint))
    assert set(average) == set(trainable)
    for name, value in average.items():
        torch.testing.assert_close(trainable[name], value, rtol=0, atol=0)
    meta = json.loads((Path(res.export) / "omnilv.json").read_text())
    assert meta["weights"] == "ema" and meta["ema"] == {"decay": 0.9, "updates": 4}


def test_bf16_zero2_learns_and_exports_the_fp32_ema(ray_local, tiny_corpus, tmp_path):
    """bf16 on DeepSpeed's CPU accelerator (the GPU path's dtype handling): the export keeps the fp32 EMA."""
    from training.model.export import load_network, read_meta

    cfg = tiny_cfg(tiny_corpus, tmp_path, "bf16", deepspeed={"precision": "bf16"}, optim={"ema_decay": 0.9},
                   schedule={"steps": 4, "checkpoint_every": 4, "eval_every": 4})
    res = train(cfg, progress=False)
    m = res.metrics
    assert m["step"] == 4 and math.isfinite(m["loss"])
    assert m["eval_loss"] < m["eval_loss_start"], "loss on the fixed batch did not fall"
    assert read_meta(res.export)["trained_in"] == "bf16"
    net = load_network(res.export)
    union = ema_average(Path(res.checkpoint))
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trained and {n for n, _ in trained} == set(union)
    for name, p in trained:
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.detach(), union[name], rtol=0, atol=0)
    # The average has bits a bf16 copy would have rounded away: the export did not go through bf16.
    assert any(not torch.equal(v, v.bfloat16().float()) for v in union.values())


def test_second_run_resumes_at_the_checkpointed_step(stage1, tiny_corpus):
    cfg, _ = stage1
    more = tiny_cfg(tiny_corpus, Path(cfg.run.storage_path), "s1", schedule={"steps": 6}, optim={"ema_decay": 0.9})
    res = train(more, progress=False)
    assert res.metrics["resumed_from"] == 4 and res.metrics["step"] == 6
    assert res.metrics["epoch"] == 1  # numbered from the step: the second pass crops anew
    import json

    meta = json.loads((Path(res.export) / "omnilv.json").read_text())
    assert meta["ema"]["updates"] == 6, "the EMA did not resume from the checkpoint's share"


def test_zero3_killed_worker_resumes_from_last_checkpoint(ray_local, tiny_corpus, tmp_path):
    from training.model.export import load_network

    cfg = tiny_cfg(tiny_corpus, tmp_path, "z3", deepspeed={"zero_stage": 3}, optim={"ema_decay": 0.9},
                   schedule={"steps": 4, "checkpoint_every": 2, "eval_every": 0})
    res = train(cfg, progress=False, fault_at_step=3)
    assert (tmp_path / "z3" / "injected-failure").read_text() == "3"  # rank 1 really died at step 3
    assert res.metrics["step"] == 4 and res.metrics["resumed_from"] == 2
    net = load_network(res.export)  # full weights gathered from the ZeRO-3 partitions
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in net.parameters())
    # ZeRO-3: every rank averaged its flat partition of every parameter; the export is them re-joined.
    shares = ema_shares(Path(res.checkpoint))
    assert len(shares) == 2
    for name, p in net.named_parameters():
        if p.requires_grad:
            joined = torch.cat([shares[0][name], shares[1][name]])[: p.numel()].view_as(p)
            torch.testing.assert_close(p.detach(), joined, rtol=0, atol=0)


def test_stage2_starts_from_stage1_weights_with_exemplars(stage1, tiny_corpus, tmp_path):
    from training.model.export import load_network

    _, res1 = stage1
    cfg = tiny_cfg(tiny_corpus, tmp_path, "s2", stage={"init_from": res1.export}, data={"use_exemplars": True},
                   schedule={"steps": 2, "eval_every": 0}, run={"workers": 1, "cpus_per_worker": 1, "export": False})
    m = train(cfg, progress=False).metrics
    want = float(sum(p.detach().double().abs().sum() for p in load_network(res1.export).parameters()))
    assert m["init_checksum"] == pytest.approx(want, rel=1e-9)
    assert m["resumed_from"] == 0 and m["step"] == 2
    assert m["exemplar_fraction"] == 1.0  # every tiny-corpus sample carries an exemplar pair


def test_resume_plan_skips_whole_shards_already_read_this_epoch(tiny_corpus, tmp_path):
    import json

    from training.run import resume_plan

    snapshot = tmp_path / "rp" / "checkpoint_manager_snapshot.json"
    snapshot.parent.mkdir()
    cfg = tiny_cfg(tiny_corpus, tmp_path, "rp", run={"workers": 1})  # global batch 4; shards of 16 + 16
    assert resume_plan(cfg) == {"step": 0, "shards": 0, "samples": 0, "epoch_samples": 32}
    for step, shards in ((3, 0), (4, 1), (7, 1), (8, 0), (12, 1)):  # 32 samples an epoch
        snapshot.write_text(json.dumps({"checkpoint_results": [{"metrics": {"step": 2}},
                                                               {"metrics": {"step": step}}]}))
        assert resume_plan(cfg) == {"step": step, "shards": shards, "samples": 16 * shards, "epoch_samples": 32}, step
    snapshot.write_text("{not json")
    assert resume_plan(cfg)["shards"] == 0  # an unreadable snapshot costs only the data position


def test_rerun_reads_the_rest_of_the_interrupted_epoch_first(ray_local, tiny_corpus, tmp_path):
    cfg = tiny_cfg(tiny_corpus, tmp_path, "rerun", schedule={"steps": 4, "checkpoint_every": 4, "eval_every": 0},
                   run={"workers": 1, "cpus_per_worker": 1, "export": False})
    assert "resume_skipped_shards" not in train(cfg, progress=False).metrics
    more = tiny_cfg(tiny_corpus, tmp_path, "rerun", schedule={"steps": 9, "checkpoint_every": 4, "eval_every": 0},
                    run={"workers": 1, "cpus_per_worker": 1, "export": False})
    m = train(more, progress=False).metrics  # 16 read: shard 1's 4 batches (steps 5-8), then a full epoch
    assert m["resumed_from"] == 4 and m["step"] == 9
    assert m["resume_skipped_shards"] == 1 and m["resume_skipped_samples"] == 16
