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
    # On GPU, DeepSpeed's own defaults: overlap_comm (on for ZeRO-3), contiguous gradients, the ZeRO-3 persistence
    # threshold (parameters under 1e5 elements, biases and norms, stay whole instead of one all-gather each).
    if not cfg.run.use_gpu and ds.zero_stage >= 1:
        # The contiguous gradient buffer fights GPU memory fragmentation; on CPU it is only an extra copy per
        # parameter and step (7% of a tiny model's step, bench/train_step.py).
        zero["contiguous_gradients"] = False
    if not cfg.run.use_gpu and ds.zero_stage == 3:
        # Every parameter of the tiny CPU presets is under the 1e5-element threshold: with the default, a CPU
        # rehearsal would keep them all whole and never partition or gather one, as a 2B model does its large ones.
        zero["stage3_param_persistence_threshold"] = 0
    if ds.zero_stage == 3:
        # Export needs full weights on rank 0; gathering 16-bit weights on save keeps one code path.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
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
        **_grad_accum_dtype(cfg),
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if opt.warmup_steps:
        out["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": opt.lr, "warmup_num_steps": opt.warmup_steps,
            "warmup_type": "linear"}}
    return out


def _grad_accum_dtype(cfg: TrainConfig) -> dict[str, Any]:
    """bf16 under ZeRO 1-3: gradients accumulate over the ``grad_accum`` micro-batches in fp32, not bf16 (ZeRO-1
    then runs DeepSpeed's ``BF16_Optimizer``). DeepSpeed refuses fp32 accumulation without ZeRO: stage 0 in bf16
    accumulates in bf16, though its optimizer still steps fp32 copies of the weights."""
    if cfg.deepspeed.precision != "bf16" or cfg.deepspeed.zero_stage == 0:
        return {}
    return {"data_types": {"grad_accum_dtype": "fp32"}}
