"""``train_loop_per_worker``: one DeepSpeed engine per Ray Train worker, in the shape of Ray's DeepSpeed example:
set up, resume, :meth:`Loop.train` (passes) -> :meth:`Loop.train_step` (one optimizer step) ->
:meth:`Loop.forward_backward_step`, export. Checkpoints, TensorBoard, export and model live in modules of their own.
"""

from __future__ import annotations

import time
from typing import Any

import ray.train
import torch

from pipelines import ConfigError
from training.config import TrainConfig
from training.data import iter_batches
from training.run import checkpoint
from training.run.assemble import build_model, setup_worker
from training.run.collective import all_ranks_have
from training.run.ds_config import deepspeed_config
from training.run.ema import RankEMA
from training.run.export_final import export_final
from training.run.faults import FaultHook
from training.run.meter import Meter
from training.run.tensorboard import TensorBoardLog


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` holds the config as JSON and what the driver hands every worker."""
    cfg = TrainConfig.model_validate(loop_config["cfg"])
    rank, world, device = setup_worker(cfg)
    import deepspeed

    built = build_model(cfg, device)  # by model.recipe: OmniLV's flow matching or Lumen
    checksum = float(sum(p.detach().double().abs().sum() for p in built.net.parameters()))
    params = [p for p in built.module.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=built.module, model_parameters=params,
                                      config=deepspeed_config(cfg, world))
    new_ema = (lambda: RankEMA(engine.module, cfg.optim.ema_decay, rank=rank, world=world,
                               zero3=cfg.deepspeed.zero_stage == 3, optimizer=engine.optimizer)) \
        if cfg.optim.ema_decay else None
    step, ema = checkpoint.resume(engine, world, new_ema)
    loop = Loop(cfg, engine, built.prepare, rank, ema=ema, step=step, driver=loop_config)
    loop.constant.update(init_checksum=checksum, world_size=world)
    loop.train()
    export_final(cfg, engine, rank, ema)
    if loop.tensorboard is not None:
        loop.tensorboard.close()


class Loop:
    """The step loop of one worker: its engine, data preparation, EMA, and what rank 0 reports."""

    def __init__(self, cfg: TrainConfig, engine: Any, prep: Any, rank: int, *, ema: RankEMA | None,
                 step: int, driver: dict[str, Any]) -> None:
        self.cfg, self.engine, self.prep, self.rank, self.ema, self.step = cfg, engine, prep, rank, ema, step
        self.board = driver.get("board") if rank == 0 else None  # the driver's ProgressBoard actor
        self.tensorboard = TensorBoardLog(cfg) if rank == 0 else None
        self.ledger = driver.get("ledger")  # pipelines.SkipLedger: the decoders read the epoch of their crops from it
        self.fault = FaultHook(cfg, rank, int(driver.get("fault_at_step", 0)))
        resume = driver.get("resume") or {}
        self.epoch = step * cfg.global_batch // max(int(resume.get("epoch_samples", 0)), 1)  # 0 for a new run
        self.constant: dict[str, Any] = {"resumed_from": step}
        self.extra: dict[str, Any] = {}
        self.first_pass = "train"
        if resume.get("shards") and resume.get("step") == step:  # the rest of the interrupted epoch first
            self.first_pass = "resume"
            self.constant.update(resume_skipped_shards=resume["shards"], resume_skipped_samples=resume["samples"])
        self.fixed: dict[str, torch.Tensor] | None = None
        self.meter, self.micro = Meter(), 0
        self.agree = len(cfg.data.sizes) > 1  # several buckets: ranks may run out apart (training.run.collective)

    def train(self) -> None:
        """Passes over this worker's dataset shard until ``schedule.steps``."""
        cfg, name = self.cfg, self.first_pass
        while self.step < cfg.schedule.steps:
            if self.ledger is not None:  # before the pass starts its decoders: they seed crops with it
                ray.get(self.ledger.set_epoch.remote(self.epoch))
            self.extra["epoch"] = self.epoch
            batches = iter(iter_batches(ray.train.get_dataset_shard(name), cfg.data.batch_size, len(cfg.data.sizes)))
            micro = self.micro
            while self.step < cfg.schedule.steps and self.train_step(batches):
                pass
            if self.micro == micro and name == "train":  # (an epoch's rest may well be under one batch per worker)
                raise ConfigError(f"{cfg.data.latents or cfg.data.corpus}: this worker's dataset shard has no full "
                                   f"batch of {cfg.data.batch_size}; the corpus is too small for {cfg.run.workers} "
                                   "worker(s)")
            name, self.epoch = "train", self.epoch + 1

    def train_step(self, batches: Any) -> bool:
        """``grad_accum`` micro-batches and one optimizer step; False when the pass ran out of batches."""
        while True:  # the micro-step count runs across passes, as DeepSpeed's own does
            t0 = time.perf_counter()
            batch = next(batches, None)
            self.meter.waited(time.perf_counter() - t0)
            if not (all_ranks_have(batch is not None, self.prep.device) if self.agree else batch is not None):
                return False
            self.forward_backward_step(batch)
            self.micro += 1
            if self.micro % self.cfg.optim.grad_accum == 0:
                break
        self.step += 1
        if self.ema is not None:
            self.ema.update()
        self.fault(self.step)
        self.after_step()
        return True

    def forward_backward_step(self, batch: dict[str, Any]) -> None:
        t1 = time.perf_counter()
        inputs = self.prep(batch)
        if self.fixed is None and self.cfg.schedule.eval_every:
            self.fixed = inputs
            self.extra["eval_loss_start"] = self.evaluate()
        loss = self.engine(inputs)
        self.engine.backward(loss)
        self.engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
        exemplars = int(batch["ref_mask"].sum()) if self.cfg.data.use_exemplars else 0
        self.meter.micro_step(time.perf_counter() - t1, loss.detach(), len(batch["txt"]), exemplars)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Loss on the first batch this worker saw, with fixed noise and times: comparable across steps."""
        self.engine.eval()
        gen = torch.Generator(device=self.prep.device).manual_seed(1234)
        loss = float(self.engine(self.fixed, generator=gen))
        self.engine.train()
        return loss

    def after_step(self) -> None:
        """Evaluate, log and checkpoint on their schedules (every rank reports to Ray Train)."""
        sched, step = self.cfg.schedule, self.step
        if sched.eval_every and step % sched.eval_every == 0:
            self.extra["eval_loss"] = self.evaluate()
        ckpt = step % sched.checkpoint_every == 0 or step == sched.steps
        if step % sched.log_every and not ckpt:
            return
        metrics = {**self.meter.metrics(step), **self.constant, **self.extra}
        metrics["loss_first"] = self.constant.setdefault("loss_first", metrics["loss"])  # the first, then kept
        if self.tensorboard is not None:
            self.tensorboard.log(step, metrics, self.engine.get_lr()[0])
        if self.board is not None:
            self.board.update.remote(metrics)
        if not ckpt:
            ray.train.report(metrics)
        else:
            if self.tensorboard is not None:
                self.tensorboard.sync()
            checkpoint.save(self.engine, self.ema, self.rank, step, metrics)
