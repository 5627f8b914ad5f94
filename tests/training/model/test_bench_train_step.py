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


class _Clock:
    """Stands in for the bench's ``time`` module: the clock moves only when an optimizer step runs."""

    def __init__(self, seconds_per_step: float) -> None:
        self.now, self.seconds_per_step = 100.0, seconds_per_step

    def perf_counter(self) -> float:
        return self.now


def test_mfu_bench_times_only_the_measured_steps(bench, monkeypatch):
    import training.model.omnilv as omnilv_mod

    guard = omnilv_mod._non_empty
    clock = _Clock(0.25)
    monkeypatch.setattr(bench, "time", clock)
    adamw_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = adamw_step(self, *args, **kwargs)
        clock.now += clock.seconds_per_step
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    r = bench.mfu_bench(torch.device("cpu"), "tiny", latent=8, batch=2, peak=1e12, iters=2, warmup=1)
    assert r["dtype"] == "torch.bfloat16"
    # One warm-up step, then 2 timed steps of 0.25 s each: 2 × 2 samples in 0.5 s = 8 samples/s.
    assert r["samples_per_s"] == pytest.approx(8.0)
    # FLOPs as counted by hand below for latent 8 (N = 16 tokens): 8,333,312.
    assert r["flops_per_sample"] == 8_333_312
    # MFU = 8 samples/s × 8,333,312 FLOPs / 1e12 FLOP/s = 6.6666496e-5.
    assert r["mfu"] == pytest.approx(6.6666496e-5, rel=1e-9)
    assert omnilv_mod._non_empty is guard  # counting FLOPs on meta tensors leaves the model code as it was


# Forward + backward FLOPs of one sample of the tiny preset, counted by hand. FlopCounterMode counts matrix
# products only: 2·m·k·n for an (m, k) @ (k, n) product (bias adds and element-wise work are free), a
# convolution as 2 × output positions × C_out × C_in × k². Backward: the weight gradient (same count) for every
# layer, plus the input gradient (same count again) where the input needs one, so ×3, or ×2 for a layer that
# reads data (x_t, the sinusoidal time features, cond, the all-zero stand-in exemplars). On CPU, attention is
# two batched products (q·kᵀ and a·v) forward, four backward: ×3.
# tiny: D = 32 (2 heads of 16), FFN width 96 (int(8·32/3) = 85 rounded up to a multiple of 16), 2 layers,
# adapter width A = 16 (one MLP block, one projection: first half of 2 layers), patch 2, 3 channels,
# time-embedding width 32 over 256 sinusoid features; text L = 128 tokens of T = 32 (bench TEXT_TOKENS).
# N = (latent / 2)² image tokens.
#   constant terms                                                  fwd         × = total
#     time linear_1 256→32 (reads sinusoids)                      16,384       ×2    32,768
#     time linear_2 32→32, caption linear 32→32, norm_out linear_1 32→32
#                                                            3 ×   2,048       ×3    18,432
#     per layer: adaLN linear 32→128                               8,192       ×3    24,576
#                cross-attention k, v on 128 text tokens 2 × 2·128·32·32       ×3 1,572,864
#     2 layers × 1,597,440 + 32,768 + 18,432                                      3,246,080
#   per image token (× N)
#     patch embed 12→32 (reads x_t)                                  768       ×2     1,536
#     per layer: self q, k, v 3 × 2,048; cross q 2,048; out 2,048; FFN 3 × 6,144
#                                                                 28,672       ×3    86,016
#                cross-attention over 128 keys 4·2 heads·128·16   16,384       ×3    49,152
#     2 layers × 135,168                                                            270,336
#     norm_out linear_2 32→12                                        768       ×3     2,304
#     prompt patch conv 6→32, 2×2 (reads zeros) 2·32·6·4           1,536       ×2     3,072
#     prompt out linear 32→32                                      2,048       ×3     6,144
#     adapter stem conv 3→16, 3×3, on 4 pixels per token 2·4·16·3·9 3,456      ×2     6,912
#     adapter patch conv 16→16, 2×2 2·16·16·4                      2,048       ×3     6,144
#     adapter fc1 16→32, fc2 32→16, projection 16→32          3 × 1,024       ×3     9,216
#     sum                                                                           305,664
#   per token pair (× N²): self-attention 4·2 heads·16 = 128 fwd ×3 = 384, 2 layers    768
# total = 3,246,080 + 305,664·N + 768·N²
TINY_FLOPS = {4: 4_481_024,  # N = 4: 3,246,080 + 1,222,656 + 12,288
              8: 8_333_312,  # N = 16: 3,246,080 + 4,890,624 + 196,608
              16: 25_954_304}  # N = 64: 3,246,080 + 19,562,496 + 3,145,728


@pytest.mark.parametrize("latent", sorted(TINY_FLOPS))
def test_flops_of_the_tiny_preset_equal_the_count_by_hand(bench, latent):
    assert bench.flops_per_sample("tiny", latent, 3, 32) == TINY_FLOPS[latent]


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


def test_peak_table_names_real_cards_and_no_guess_for_unknown_ones():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "bench" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step_peaks", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    # Data-sheet dense bf16 figures (TFLOP/s): H100 SXM 989, PCIe 756, NVL 835; A100 312.
    assert mod.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert mod.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert mod.peak_bf16("NVIDIA H100 NVL") == 835e12
    assert mod.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert mod.peak_bf16("NVIDIA GeForce RTX 4090") is None  # no figure, rather than the A100's


def _saved_by_graph(net, x: dict) -> int:
    """Bytes of every tensor the autograd graph saved, read off its nodes (``_saved_*``), storages counted once,
    parameters left out: a measure independent of the bench's saved-tensor hooks."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    loss = net(**x).square().mean()
    seen, todo, kept = set(), [loss.grad_fn], {}
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                vals = getattr(node, name)
                for t in vals if isinstance(vals, (tuple, list)) else (vals,):
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        todo.extend(n for n, _ in node.next_functions)
    return sum(kept.values())


def test_activation_memory_matches_the_graphs_saved_tensors_and_checkpointing_keeps_less(bench):
    from training.model import OmniLV

    m = bench.activation_memory(hidden_size=32, num_layers=2, latent=16, heads=2)
    assert m["tokens"] == 64  # 16² latent, patch 2
    without, with_ck = m["bytes_per_sample"]["without_checkpointing"], m["bytes_per_sample"]["with_checkpointing"]
    assert m["activation_bytes_per_token_per_layer"]["without_checkpointing"] == without / (64 * 2)
    torch.manual_seed(0)
    net = OmniLV.from_preset("tiny", hidden_size=32, num_layers=2, num_attention_heads=2)
    g = torch.Generator().manual_seed(0)
    x = {"x_t": torch.randn(1, 3, 16, 16, generator=g), "t": torch.rand(1, generator=g),
         "cond": torch.randn(1, 3, 16, 16, generator=g), "text": torch.randn(1, bench.TEXT_TOKENS, 32, generator=g),
         "text_mask": torch.ones(1, bench.TEXT_TOKENS, dtype=torch.bool)}
    assert without == pytest.approx(_saved_by_graph(net, x), rel=0.02)
    # Checkpointed, each block keeps at least its (1, 64, 32) float32 input: 8 KiB per layer, and far less in all.
    assert 2 * 64 * 32 * 4 <= with_ck < 0.6 * without
