"""The DeepSpeed config dict, derived from a validated :class:`TrainConfig` — the one place it is built."""

from __future__ import annotations

from typing import Any

from training.config import TrainConfig


def deepspeed_config(cfg: TrainConfig, world_size: int | None = None) -> dict[str, Any]:
    """DeepSpeed's JSON config for ``deepspeed.initialize(config=...)``.

    ``world_size`` defaults to ``cfg.run.workers``; DeepSpeed checks that
    ``train_batch_size == micro * accumulation * world_size``.
    """
    world = world_size or cfg.run.workers
    ds, opt = cfg.deepspeed, cfg.optim
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        # The contiguous gradient buffer fights GPU memory fragmentation; on CPU it is only an extra copy per
        # parameter and step (7% of a tiny model's step, bench/train_step.py).
        zero.update(overlap_comm=False, contiguous_gradients=cfg.run.use_gpu)
    if ds.zero_stage == 3:
        # Export needs full weights on rank 0; gathering 16-bit weights on save keeps one code path.
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=0)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.run.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.run.use_gpu}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": opt.grad_accum,
        "train_batch_size": cfg.data.batch_size * opt.grad_accum * world,
        "gradient_clipping": opt.grad_clip,
        "optimizer": {"type": "AdamW", "params": {
            "lr": opt.lr, "betas": list(opt.betas), "weight_decay": opt.weight_decay, "eps": 1e-8,
            # torch's AdamW: DeepSpeed's fused CPU Adam would need a C++ build on every machine.
            "torch_adam": not ds.offload_optimizer, "adam_w_mode": True}},
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if opt.warmup_steps:
        out["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": opt.lr, "warmup_num_steps": opt.warmup_steps,
            "warmup_type": "linear"}}
    return out
