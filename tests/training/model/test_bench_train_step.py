"""bench/train_step.py's MFU measurement, run on CPU with the tiny preset: the GPU path is the same code."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench():
    env = dict(os.environ)
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "bench" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.environ.clear()
    os.environ.update(env)
    return module


def test_mfu_bench_runs_bf16_training_steps(bench):
    import training.model.omnilv as omnilv_mod

    guard = omnilv_mod._non_empty
    r = bench.mfu_bench(torch.device("cpu"), "tiny", latent=8, batch=2, peak=1e12, iters=2, warmup=1)
    assert r["dtype"] == "torch.bfloat16" and r["samples_per_s"] > 0 and r["flops_per_sample"] > 0
    assert r["mfu"] == pytest.approx(r["samples_per_s"] * r["flops_per_sample"] / 1e12)
    assert omnilv_mod._non_empty is guard  # counting FLOPs on meta tensors leaves the model code as it was


def test_flops_of_the_2b_preset_follow_six_n_t(bench):
    """Training FLOPs ≈ 6 × parameters × image tokens: attention's T² adds some, and the weights that see only
    the 128 text tokens (cross-attention keys/values, caption projection) or one vector per sample take some
    away (0.91 when written)."""
    from training.model.omnilv import OmniLV

    with torch.device("meta"):
        n = sum(p.numel() for p in OmniLV.from_preset("2b").parameters() if p.requires_grad)
    tokens = (64 // 2) ** 2  # 512² through an 8x VAE, patch 2
    ratio = bench.flops_per_sample("2b", 64, 4, 2304) / (6 * n * tokens)
    assert 0.8 < ratio < 1.3, ratio
    assert bench.flops_per_sample("tiny", 16, 3, 32) > 3 * bench.flops_per_sample("tiny", 8, 3, 32)
