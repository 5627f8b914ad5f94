"""Training step benchmark, one run: Ray Train + DeepSpeed vs a bare PyTorch loop, data wait, FLOPs, MFU.

    python bench/train_step.py [--steps 60] [--out bench/results/train_step.json]

- CPU: samples/s of the tiny model (1 worker, 1 thread) under Ray Train + DeepSpeed ZeRO-0 and ZeRO-2
  vs a bare PyTorch loop on the same model, batch size and corpus; ratio = step time / bare step time
  (target ≤ 1.10); the fraction of step time spent waiting for data (target < 5%). Both sides are
  measured over the last ``--steps // 3`` steps (after warm-up), in ``--rounds`` interleaved rounds
  (bare, ZeRO-0, ZeRO-2, bare, …) whose medians are compared: a shared 2-core machine drifts by ±20%
  between minutes. ``compute_ratio`` uses the time inside the training step only (prepare, forward,
  backward, optimizer), which isolates the engine's cost from the Ray worker around it. One unmeasured
  Ray run comes first (first-run effects: page cache, lazy imports).
- ``--cores isolated`` (the default on Linux with ≥ 2 cores) gives the training step a core of its own, as on
  a GPU node, where Ray's control plane never shares the training process's cores: the bare loop and the
  Ray Train worker process (every thread of it: the Ray Data iterator and gRPC threads compete with the step
  there, as they would anywhere) run on core 0; the driver, raylet, GCS, dashboard and the Ray Data
  readers and decoders on the other cores. ``--cores shared`` lets the OS place everything: on a 2-core
  machine Ray's control plane (a dozen processes, the decoders, the per-epoch start of the read) then
  takes turns on the training core, at nice 0 against the worker's nice 15.
- FLOPs per training sample (forward + backward) measured with ``torch.utils.flop_counter.FlopCounterMode``
  on meta tensors for the tiny, stage1 (2B @512²) and stage3 (2B @1024²) configs; the cluster planner
  reads these instead of typed constants.
- Activation memory: bytes kept for backward per sample of the ``tiny`` preset widened (D 128, 4 layers) on a
  4,096-token image, with and without ``model.activation_checkpointing``, and per token per layer (the planner scales
  that to the 2B width). ``--memory-only`` measures just this and merges it into ``--out``.
- GPU (only when CUDA is available): samples/s and MFU of the 2B preset at 512² in bf16 (target ≥ 40%): a bare
  bf16 AdamW step (no fp32 masters, no ZeRO, no encoders: an upper bound), and the real step, ``real_step``: Ray
  Train + DeepSpeed ZeRO-2 bf16 with fp32 masters, a VAE of SDXL's shape (random weights: the same FLOPs) encoding
  every batch and the text encoder, over a 512² corpus. MFU counts the model's FLOPs only (the usual definition);
  the encoders' time is part of the step. Without a GPU the same real-step code runs the tiny preset on CPU
  (samples/s only: a CPU has no entry in the peak table).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


TEXT_TOKENS = 128  # instruction length assumed for the FLOPs count (Gemma tokens)


def write_corpus(root: Path, n: int = 256, size: int = 48) -> Path:
    from degradations import default_image
    from pipelines.schema import MANIFEST, Manifest, Sample, ShardRecord, shard_name

    img, rng = default_image(), np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            y, x = rng.integers(0, img.shape[0] - size, 2)
            clean = np.ascontiguousarray(img[y:y + size, x:x + size])
            noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
            members = Sample(f"k{i:05d}", noisy, clean, "Remove the noise.", {"task": "denoise"}).to_members(level=1)
            for name, data in members.items():
                if name != "__key__":
                    info = tarfile.TarInfo(f"k{i:05d}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / shard_name(0)).write_bytes(buf.getvalue())
    (root / MANIFEST).write_text(Manifest([ShardRecord(shard_name(0), n, len(buf.getvalue()), "0" * 64)]).to_json())
    return root


def bench_config(corpus: Path, storage: Path, zero: int, steps: int, batch: int):
    from training.config import load_train_config

    window = max(1, steps // 3)
    return load_train_config({
        "data": {"corpus": str(corpus), "resolution": 32, "batch_size": batch},
        "model": {"objective": {"timestep_sampling": "uniform"}},
        "schedule": {"steps": steps, "checkpoint_every": 10**6, "log_every": window},
        "deepspeed": {"zero_stage": zero}, "stage": {"name": f"bench_zero{zero}"},
        "run": {"workers": 1, "cpus_per_worker": 1, "storage_path": str(storage), "export": False}})


def bare_loop(cfg, steps: int) -> dict[str, float]:
    """The same model, batches and optimizer in plain PyTorch: batches materialised up front (no data wait)."""
    from pipelines.ingest import DecodeCrop
    from pipelines.read import iter_members, shard_urls
    from training.data.batches import Prepare, collate
    from training.run import build_flow

    torch.set_num_threads(1)
    dec = DecodeCrop(cfg.data.sizes, True, False, cfg.run.seed)
    members = [m for u in shard_urls(cfg.data.corpus) for m in iter_members(u)]
    rows = [dict(key=m["__key__"], input=m["input.png"], target=m["target.png"], txt=m["txt"], json=m["json"],
                 ref_input=b"", ref_target=b"", skipped="") for m in members]
    bs = cfg.data.batch_size
    batches = [collate(dec({k: np.array([r[k] for r in rows[i:i + bs]], dtype=object) for k in rows[0]}))
               for i in range(0, len(rows) - bs + 1, bs)]
    flow, codec, text = build_flow(cfg, torch.device("cpu"))
    prep = Prepare(codec, text, torch.device("cpu"), False)
    opt = torch.optim.AdamW([p for p in flow.parameters() if p.requires_grad], lr=cfg.optim.lr)
    window = max(1, steps // 3)
    for s in range(steps):
        if s == steps - window:
            t0 = time.perf_counter()
        loss = flow(prep(batches[s % len(batches)]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.optim.grad_clip)
        opt.step()
    dt = (time.perf_counter() - t0) / window
    return {"step_s": dt, "samples_per_s": bs / dt}


def ray_run(cfg) -> dict[str, float]:
    from training.run import run_stage as train

    m = train(cfg, progress=False).metrics
    return {"step_s": cfg.data.batch_size / m["samples_per_s"], "samples_per_s": m["samples_per_s"],
            "compute_s": m["compute_s_per_micro_step"], "data_wait_fraction": m["data_wait_fraction"]}


class CorePinner:
    """Keeps Ray Train worker processes (all their threads) on ``core`` and the driver on the other cores,
    from the moment each worker appears (polled every 20 ms: long before the measured window)."""

    def __init__(self, core: int) -> None:
        self.core, self.rest = {core}, set(os.sched_getaffinity(0)) - {core}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CorePinner:
        os.sched_setaffinity(0, self.rest)  # before Ray starts: every Ray process inherits it
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def on_training_core(self):
        """Run the driver's own code (the bare loop) on the training core."""
        os.sched_setaffinity(0, self.core)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.rest)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.02):
            for proc in psutil.process_iter(["cmdline"]):
                if not " ".join(proc.info["cmdline"] or ()).startswith("ray::RayTrainWorker"):
                    continue
                try:
                    for th in proc.threads():
                        if os.sched_getaffinity(th.id) != self.core:
                            os.sched_setaffinity(th.id, self.core)
                except (psutil.Error, OSError):  # exited meanwhile
                    pass


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def flops_per_sample(preset: str, latent: int, channels: int, text_dim: int) -> float:
    """Forward + backward FLOPs of one training sample, counted on meta tensors (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    import training.model.omnilv as omnilv_mod
    from training.model.flow import FlowMatching
    from training.model.omnilv import OmniLV

    # The text-mask guard branches on data (bool(mask.any())), which meta tensors cannot answer; our
    # masks are all-valid, so the guard is the identity here and costs no FLOPs.
    guard, omnilv_mod._non_empty = omnilv_mod._non_empty, lambda mask: mask
    try:
        with torch.device("meta"):
            flow = FlowMatching(OmniLV.from_preset(preset, in_channels=channels, cross_attention_dim=text_dim))
            lat = torch.randn(1, channels, latent, latent)
            batch = {"x1": lat, "cond": lat.clone(), "text": torch.randn(1, TEXT_TOKENS, text_dim),
                     "text_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.bool)}
        flow.net._rope.clear()
        counter = FlopCounterMode(display=False)
        with counter:
            flow(batch).backward()
    finally:
        omnilv_mod._non_empty = guard
    return float(counter.get_total_flops())


def kept_for_backward(net, x: dict) -> int:
    """Bytes one forward keeps for backward: saved tensors plus the block inputs a checkpoint holds, each storage
    counted once, parameters left out (they live anyway); as tests/training/model/test_memory.py counts them."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    def held(module: torch.nn.Module, args: tuple) -> None:  # a checkpoint keeps its block's input alive
        pack(args[0])

    hooks = [layer.register_forward_pre_hook(held) for layer in net.backbone.layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = net(**x).square().mean()
    finally:
        for h in hooks:
            h.remove()
    loss.backward()
    return sum(kept.values())


def activation_memory(hidden_size: int = 128, num_layers: int = 4, latent: int = 128, heads: int = 4) -> dict:
    """Bytes kept for backward per sample, with and without activation checkpointing, of the ``tiny`` preset
    widened to ``hidden_size`` with ``num_layers`` layers on one ``latent``² float32 latent (patch 2: 128² is
    4,096 tokens); also per token per layer, the figure the planner scales to the 2B width and a stage's tokens."""
    from training.model.omnilv import OmniLV
    from training.model.presets import preset as preset_fields

    torch.manual_seed(0)
    net = OmniLV.from_preset("tiny", hidden_size=hidden_size, num_layers=num_layers, num_attention_heads=heads)
    net.train()
    fields = preset_fields("tiny")
    c, p, text_dim = fields["in_channels"], fields["patch_size"], fields["cross_attention_dim"]
    g = torch.Generator().manual_seed(0)
    x = {"x_t": torch.randn(1, c, latent, latent, generator=g), "t": torch.rand(1, generator=g),
         "cond": torch.randn(1, c, latent, latent, generator=g),
         "text": torch.randn(1, TEXT_TOKENS, text_dim, generator=g),
         "text_mask": torch.ones(1, TEXT_TOKENS, dtype=torch.bool)}
    tokens = (latent // p) ** 2
    per_sample = {}
    for on in (False, True):
        net.activation_checkpointing = on
        per_sample["with_checkpointing" if on else "without_checkpointing"] = kept_for_backward(net, x)
    return {"preset": "tiny", "hidden_size": hidden_size, "num_layers": num_layers, "num_attention_heads": heads,
            "latent": latent, "patch_size": p, "tokens": tokens, "text_tokens": TEXT_TOKENS, "dtype": "float32",
            "bytes_per_sample": per_sample,
            "activation_bytes_per_token_per_layer": {k: v / (tokens * num_layers) for k, v in per_sample.items()}}


#: Dense bf16 tensor-core peak (FLOP/s, no sparsity) by the marks in ``torch.cuda.get_device_name()``, most specific
#: first: the vendors' data sheets. A card not listed gets no MFU figure (never another card's peak).
PEAK_BF16 = ((("H100", "PCIe"), 756e12), (("H100", "NVL"), 835e12), (("H100",), 989e12), (("H200",), 989e12),
             (("GH200",), 989e12), (("A100",), 312e12), (("A800",), 312e12), (("L40S",), 362e12),
             (("L4",), 121e12), (("A10G",), 70e12), (("B200",), 2250e12))


def peak_bf16(name: str) -> float | None:
    """The dense bf16 peak of the card called ``name``, or None when it is not in :data:`PEAK_BF16`."""
    return next((peak for marks, peak in PEAK_BF16 if all(m in name for m in marks)), None)



def mfu_bench(device: torch.device, preset: str, latent: int, batch: int, peak: float | None, *, iters: int = 10,
              warmup: int = 3, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Samples/s of full training steps (forward, backward, AdamW) of ``preset`` on ``latent``² latents in
    ``dtype``, and MFU = samples/s × FLOPs per sample / ``peak``."""
    from training.model.flow import FlowMatching
    from training.model.omnilv import OmniLV
    from training.model.presets import preset as preset_fields

    fields = preset_fields(preset)
    channels, text_dim = fields["in_channels"], fields["cross_attention_dim"]
    flow = FlowMatching(OmniLV.from_preset(preset)).to(device, dtype)
    opt = torch.optim.AdamW(flow.parameters(), lr=1e-4)
    x1 = torch.randn(batch, channels, latent, latent, device=device, dtype=dtype)
    data = {"x1": x1, "cond": x1.clone(), "text": torch.randn(batch, TEXT_TOKENS, text_dim, device=device, dtype=dtype),
            "text_mask": torch.ones(batch, TEXT_TOKENS, dtype=torch.bool, device=device)}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup + iters):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        flow(data).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    sps = batch * iters / (time.perf_counter() - t0)
    flops = flops_per_sample(preset, latent, channels, text_dim)
    return {"device": str(device), "preset": preset, "latent": latent, "batch_size": batch, "dtype": str(dtype),
            "samples_per_s": sps, "flops_per_sample": flops, "peak_flops": peak,
            "mfu": sps * flops / peak if peak else None}  # an unknown card: no peak, so no MFU


def gpu_bench() -> dict | None:
    """The 2B preset at 512² (64² latents through an 8× VAE) in bf16 on the first GPU; None without one."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name)
    return {"device_name": name, "resolution": 512,
            **mfu_bench(torch.device("cuda"), "2b", latent=64, batch=8, peak=peak)}


def sdxl_shaped_vae(folder: Path) -> Path:
    """A diffusers AutoencoderKL with SDXL's architecture (8x down, 4 latent channels) and random weights."""
    from diffusers import AutoencoderKL

    blocks = 4
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=1024, scaling_factor=0.13025)
    vae.save_pretrained(folder)
    return folder


def real_step(tmp: Path, *, gpu: bool, steps: int = 30, batch: int | None = None) -> dict:
    """Samples/s and MFU of the real training step: ``run_stage`` (Ray Train + DeepSpeed ZeRO-2) on a written
    corpus. GPU: the 2B preset, 512², bf16, an SDXL-shaped VAE; CPU: the tiny preset at 32² in fp32."""
    from training.config import load_train_config
    from training.model import TextEncoder
    from training.run import run_stage

    resolution, preset, batch = (512, "2b", batch or 8) if gpu else (32, "tiny", batch or 8)
    corpus = write_corpus(tmp / f"real{resolution}", n=max(64, batch * 8), size=resolution)
    codec = str(sdxl_shaped_vae(tmp / "vae")) if gpu else "pixel"
    window = max(1, steps // 3)
    cfg = load_train_config({
        "model": {"preset": preset, "activation_checkpointing": False}, "text": "tiny", "codec": codec,
        "data": {"corpus": str(corpus), "resolution": resolution, "batch_size": batch, "random_crop": False},
        "schedule": {"steps": steps, "checkpoint_every": 10**6, "log_every": window},
        "deepspeed": {"zero_stage": 2, "precision": "bf16" if gpu else "fp32"},
        "stage": {"name": f"bench_real_{preset}"},
        "run": {"workers": 1, "use_gpu": gpu, "cpus_per_worker": 4 if gpu else 1, "storage_path": str(tmp / "runs"),
                "export": False}})
    m = run_stage(cfg, progress=False).metrics
    latent = resolution // (8 if gpu else 1)
    flops = flops_per_sample(preset, latent, 4 if gpu else 3, TextEncoder.from_spec("tiny").dim)
    peak = peak_bf16(torch.cuda.get_device_name()) if gpu else None
    sps = float(m["samples_per_s"])
    return {"device": "cuda" if gpu else "cpu", "preset": preset, "resolution": resolution, "batch_size": batch,
            "precision": cfg.deepspeed.precision, "samples_per_s": sps, "flops_per_sample": flops,
            "data_wait_fraction": m.get("data_wait_fraction"), "peak_flops": peak,
            "mfu": sps * flops / peak if peak else None}


def merge_memory(out: Path) -> None:
    """``--memory-only``: the activation figures merged into an existing ``out`` (the rest of it is kept)."""
    report = json.loads(out.read_text()) if out.is_file() else {}
    mem = activation_memory()
    report.update({"activation_memory": mem,
                   "activation_bytes_per_token_per_layer": mem["activation_bytes_per_token_per_layer"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(mem, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_step.json"))
    isolate = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    ap.add_argument("--cores", choices=("isolated", "shared"), default="isolated" if isolate else "shared",
                    help="isolated: the training step on a core of its own (default where possible); shared: "
                         "the OS places every process")
    ap.add_argument("--real-step-only", action="store_true",
                    help="measure only the real Ray Train + DeepSpeed step (MFU on a GPU) and merge it into --out")
    ap.add_argument("--memory-only", action="store_true",
                    help="measure only the activation memory (with/without checkpointing) and merge it into --out")
    args = ap.parse_args()
    if args.memory_only:
        merge_memory(Path(args.out))
        return
    if args.real_step_only:
        from pipelines import ensure_ray

        ensure_ray()
        with tempfile.TemporaryDirectory() as tmp:
            real = real_step(Path(tmp), gpu=torch.cuda.is_available())
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.is_file() else {}
        report["real_step"] = real
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(json.dumps(real, indent=1))
        return
    from pipelines import ensure_ray

    pinner = CorePinner(0) if args.cores == "isolated" else None
    with tempfile.TemporaryDirectory() as tmp, pinner or contextlib.nullcontext():
        ensure_ray()
        corpus = write_corpus(Path(tmp) / "corpus")
        base = bench_config(corpus, Path(tmp) / "runs", 0, args.steps, args.batch)
        warm = bench_config(corpus, Path(tmp) / "runs", 0, 10, args.batch)
        warm.stage.name = "bench_warmup"
        ray_run(warm)
        runs: dict[str, list[dict[str, float]]] = {"bare": [], "ray_deepspeed_zero0": [], "ray_deepspeed_zero2": []}
        for i in range(args.rounds):
            with pinner.on_training_core() if pinner else contextlib.nullcontext():
                runs["bare"].append(bare_loop(base, args.steps))
            for zero in (0, 2):
                cfg = bench_config(corpus, Path(tmp) / "runs", zero, args.steps, args.batch)
                cfg.stage.name = f"bench_zero{zero}_{i}"
                runs[f"ray_deepspeed_zero{zero}"].append(ray_run(cfg))
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]['step_s'] * 1e3:.1f} ms"
                                                              for k, v in runs.items()), flush=True)
        cpu: dict = {"batch_size": args.batch, "resolution": 32, "preset": "tiny", "steps": args.steps,
                     "rounds": args.rounds, "cores": args.cores, "bare": median_of(runs["bare"])}
        for zero in (0, 2):
            r = median_of(runs[f"ray_deepspeed_zero{zero}"])
            r["step_time_ratio_vs_bare"] = r["step_s"] / cpu["bare"]["step_s"]
            r["compute_ratio_vs_bare"] = r["compute_s"] / cpu["bare"]["step_s"]
            r["per_round_step_ratios"] = [round(a["step_s"] / b["step_s"], 3) for a, b in
                                          zip(runs[f"ray_deepspeed_zero{zero}"], runs["bare"], strict=True)]
            cpu[f"ray_deepspeed_zero{zero}"] = r
        real = real_step(Path(tmp), gpu=torch.cuda.is_available())
    flops = {"tiny": flops_per_sample("tiny", 32, 3, 32), "stage1_512": flops_per_sample("2b", 64, 4, 2304),
             "stage3_1024": flops_per_sample("2b", 128, 4, 2304)}
    mem = activation_memory()
    report = {"cpu": cpu, "flops_per_sample": flops, "gpu": gpu_bench(), "real_step": real,
              "activation_memory": mem,
              "activation_bytes_per_token_per_layer": mem["activation_bytes_per_token_per_layer"],
              "notes": "flops: forward+backward per sample, latent 512²/8 and 1024²/8, 128 text tokens; "
                       "VAE and text-encoder FLOPs excluded (latent cache)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
