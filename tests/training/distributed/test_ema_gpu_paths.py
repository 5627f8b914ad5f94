"""The EMA on the GPU paths, proven on CPU: it lives on the device of what it averages, and it averages the fp32
masters that DeepSpeed's optimizer holds, not the bf16 weights of the module."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from training.run.ema import EMA, RankEMA, read_average

REPO = Path(__file__).resolve().parents[3]


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 64), nn.LayerNorm(64), nn.Linear(64, 4))


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_a_resumed_ema_is_loaded_onto_the_device_of_the_live_weights(tmp_path, rank, world):
    """A share saved on one device and loaded where the live weights are on another (``meta`` stands in for
    CUDA): the first update after the resume must not mix devices."""
    torch.manual_seed(0)
    saved = RankEMA(net(), 0.9, rank=rank, world=world, zero3=False)
    saved.update()
    saved.save(tmp_path)
    with torch.device("meta"):
        live = net()
    ema = RankEMA(live, 0.9, rank=rank, world=world, zero3=False)
    assert ema.load(tmp_path)
    assert ema.ema.shadow and all(t.device.type == "meta" for t in ema.ema.shadow.values())
    ema.update()  # before the fix: shadow on CPU lerped towards a meta (on a GPU: CUDA) tensor
    assert ema.ema.num_updates == 2
    assert all(t.device.type == "meta" for t in ema.ema.shadow.values())


def test_ema_state_loads_into_shadows_where_they_are():
    with torch.device("meta"):
        ema = EMA(net(), decay=0.5)
    ema.load_state_dict(EMA(net(), decay=0.9).state_dict())  # saved on CPU
    assert ema.decay == 0.9 and all(t.device.type == "meta" for t in ema.shadow.values())
    with pytest.raises(ValueError, match="shapes"):
        ema.load_state_dict({**ema.state_dict(), "shadow": {n: torch.zeros(1) for n in ema.shadow}})


def test_shares_join_into_the_full_average(tmp_path):
    model = net()
    for rank in (0, 1):
        RankEMA(model, 0.9, rank=rank, world=2, zero3=False).save(tmp_path)
    joined = read_average(tmp_path)
    assert joined.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(joined[n], p.detach()) for n, p in model.named_parameters())


def test_a_share_laid_out_for_another_run_is_not_loaded(tmp_path):
    RankEMA(net(), 0.9, rank=0, world=2, zero3=False).save(tmp_path)
    assert not RankEMA(net(), 0.9, rank=0, world=3, zero3=False).load(tmp_path)  # other round-robin deal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_every_zero_stage_averages_fp32_masters_in_bf16():
    """An engine per ZeRO stage 0-3 (and ZeRO-3 again with the GPU dict), bf16, 2 micro-batches per step, in one
    subprocess: DeepSpeed's process group would outlive the test in pytest's own process."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("ok ")] == [
        "ok zero0 cpu", "ok zero1 cpu", "ok zero2 cpu", "ok zero3 cpu", "ok zero3 gpu-dict"]


def check_engines(tmp: Path) -> None:
    """In the subprocess: for each stage, the EMA equals an EMA of the fp32 masters computed beside it."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    for stage, gpu in [(0, False), (1, False), (2, False), (3, False), (3, True)]:
        check_stage(stage, gpu, tmp / f"zero{stage}-{gpu}")
        print(f"ok zero{stage} {'gpu-dict' if gpu else 'cpu'}", flush=True)


def check_stage(stage: int, gpu: bool, folder: Path) -> None:
    import warnings

    import deepspeed

    from training.config import load_train_config
    from training.run.ds_config import deepspeed_config

    cfg = load_train_config({"deepspeed": {"zero_stage": stage, "precision": "bf16"},
                             "optim": {"lr": 1e-2, "grad_accum": 2}, "data": {"batch_size": 2},
                             "run": {"workers": 1, "use_gpu": gpu}})
    torch.manual_seed(0)
    model = net()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=deepspeed_config(cfg))
    assert engine.get_data_types() == (torch.bfloat16, torch.float32 if stage else torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ema = RankEMA(engine.module, 0.5, rank=0, world=1, zero3=stage == 3, optimizer=engine.optimizer)
    assert not [w for w in caught if "fp32 master" in str(w.message)], [str(w.message) for w in caught]
    ref = EMA(fp32_masters(engine, stage), decay=0.5)
    for _ in range(3):
        for _ in range(2):
            loss = engine(torch.randn(2, 8, dtype=torch.bfloat16)).float().pow(2).mean()
            engine.backward(loss)
            engine.step()
        ema.update()
        ref.update(fp32_masters(engine, stage))
    full = ema.gather()
    assert set(full) == set(ref.shadow)
    for n, v in full.items():
        torch.testing.assert_close(v, ref.shadow[n].view_as(v), rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(v, v.bfloat16().float()) for v in full.values()), "the EMA went through bf16"
    ema.save(folder)
    again = RankEMA(engine.module, 0.5, rank=0, world=1, zero3=stage == 3, optimizer=engine.optimizer)
    assert again.load(folder) and again.ema.num_updates == 3
    assert all(torch.equal(v, again.gather()[n]) for n, v in full.items())


def fp32_masters(engine, stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 master of every parameter: ZeRO-0's per-parameter copies, else DeepSpeed's accessor."""
    from deepspeed.utils import safe_get_full_fp32_param

    if stage == 0:
        opt = engine.optimizer
        copies = {id(lp): hp for lg, hg in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
                  for lp, hp in zip(lg, hg, strict=True)}
        return {n: copies[id(p)].clone() for n, p in engine.module.named_parameters()}
    return {n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()}


@pytest.mark.slow
def test_bf16_zero2_ema_equals_the_fp32_masters_across_a_restart(ray_local, tiny_corpus, tmp_path):
    """Two workers, bf16, ZeRO-2, a worker killed at step 3: with a decay this small every update copies the
    averaged values, so each share must equal, bit for bit, the fp32 master partition in DeepSpeed's checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors import safe_open
    from test_dist_train import tiny_cfg

    from training.model.export import load_network, read_meta
    from training.run import run_stage

    cfg = tiny_cfg(tiny_corpus, tmp_path, "bf16ema", deepspeed={"precision": "bf16"}, optim={"ema_decay": 1e-9},
                   schedule={"steps": 4, "checkpoint_every": 2, "eval_every": 0})
    res = run_stage(cfg, progress=False, fault_at_step=3)
    assert res.metrics["step"] == 4 and res.metrics["resumed_from"] == 2
    assert read_meta(res.export)["ema"]["updates"] == 4, "the restarted workers did not load their EMA shares"
    ckpt = Path(res.checkpoint)
    masters = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="ds")
    averaged = read_average(ckpt)
    pieces = []
    for path in sorted((ckpt / "ema").glob("rank*.safetensors")):
        with safe_open(str(path), "pt") as f:
            pieces.append(set(json.loads(f.metadata()["starts"])))
    assert len(pieces) == 2 and pieces[0] & pieces[1], "no parameter straddles the two ranks' partitions"
    exported = {n: p for n, p in load_network(res.export).named_parameters() if p.requires_grad}
    assert {n.removeprefix("net.") for n in averaged} == set(exported)
    for name, value in averaged.items():
        assert torch.equal(value, masters[name]), name
        assert torch.equal(exported[name.removeprefix("net.")].detach(), value), name
    assert any(not torch.equal(v, v.bfloat16().float()) for v in averaged.values()), "masters went through bf16"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        check_engines(Path(tmp))
