"""``train_loop_per_worker``: one DeepSpeed engine per Ray Train worker (the shape of Ray's DeepSpeed example).

dataset shard -> ``iter_torch_batches`` -> codec/text encode -> ``engine(batch)`` (FlowMatching loss)
-> ``engine.backward`` -> ``engine.step``; every ``checkpoint_every`` steps each rank calls
``engine.save_checkpoint`` into its own temp folder, writes a completion marker, and all ranks
``ray.train.report(..., checkpoint=...)``. Ray merges the ranks' files into one checkpoint folder;
a resume loads it only when every rank's marker is there (:mod:`training.checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
import torch

from training.averaging import RankEMA, describe, load_into
from training.config import TrainConfig
from training.data import Prepare, iter_batches
from training.deepspeed_config import deepspeed_config
from training.runstore import exists, is_remote, join, upload_dir

if TYPE_CHECKING:
    from training.flow import FlowMatching

STEP_FILE = "step.txt"
MARKER = "COMPLETE.rank{rank}"


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` = {"cfg": TrainConfig as JSON, "board": ProgressBoard | None}."""
    cfg = TrainConfig.model_validate(loop_config["cfg"])
    if not cfg.run.use_gpu:  # DeepSpeed's own choice here, named so that it does not warn on every worker
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    # Ray Train's per-report and per-checkpoint messages come from loggers named by file path, outside
    # "ray.train", so RunConfig's LoggingConfig does not reach them: set the worker's root level too.
    logging.getLogger().setLevel(cfg.run.log_level)
    for k, v in loop_config.get("env", {}).items():
        os.environ.setdefault(k, v)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.run.use_gpu else torch.device("cpu")
    # Ray Train already created the process group (TorchConfig backend); DeepSpeed reuses it.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.run.use_gpu else "gloo")
    flow, codec, text = build_flow(cfg, device)
    checksum = float(sum(p.detach().double().abs().sum() for p in flow.net.parameters()))
    params = [p for p in flow.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=flow, model_parameters=params, config=deepspeed_config(cfg, world))
    new_ema = (lambda: RankEMA(engine.module, cfg.optim.ema_decay, rank=rank, world=world,
                               zero3=cfg.deepspeed.zero_stage == 3)) if cfg.optim.ema_decay else None
    step, ema = _resume(engine, world, new_ema)
    run = _Run(cfg, engine, Prepare(codec.to(device), text.to(device), device, cfg.data.use_exemplars), rank,
               board=loop_config.get("board") if rank == 0 else None, writer=_Board(cfg) if rank == 0 else None)
    run.ema = ema
    run.constant.update(resumed_from=step, init_checksum=checksum, world_size=world)
    resume = loop_config.get("resume") or {}
    run.ledger = loop_config.get("ledger")
    run.epoch = step * cfg.global_batch // max(int(resume.get("epoch_samples", 0)), 1)  # 0 for a new run
    if resume.get("shards") and resume.get("step") == step:  # not after a worker restart at another step
        run.first_pass = "resume"
        run.constant.update(resume_skipped_shards=resume["shards"], resume_skipped_samples=resume["samples"])
    run.train(step)
    export_final(cfg, engine, rank, ema)
    if run.writer is not None:
        run.writer.close()


class _Run:
    """The step loop's state: timing, running loss, the fixed evaluation batch."""

    def __init__(self, cfg: TrainConfig, engine: Any, prep: Prepare, rank: int, board: Any, writer: Any) -> None:
        self.cfg, self.engine, self.prep, self.rank, self.board, self.writer = cfg, engine, prep, rank, board, writer
        self.constant: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.fixed: dict[str, torch.Tensor] | None = None
        self.ema: RankEMA | None = None
        self.first_pass = "train"  # "resume": the rest of an interrupted epoch (trainer.resume_plan)
        self.ledger: Any = None  # pipelines.ingest.SkipLedger: where the decoders read the epoch of their crops
        self.epoch = 0
        self._reset()

    def _reset(self) -> None:
        self.wait = self.busy = 0.0
        self.losses: list[float] = []
        self.samples = self.exemplars = 0
        self.t_mark = time.perf_counter()

    def train(self, step: int) -> int:
        cfg, name = self.cfg, self.first_pass
        micro = 0
        while step < cfg.schedule.steps:
            if self.ledger is not None:  # before the pass starts its decoders: they seed crops with it
                ray.get(self.ledger.set_epoch.remote(self.epoch))
            self.extra["epoch"] = self.epoch
            shard = ray.train.get_dataset_shard(name)
            it, got = iter(iter_batches(shard, cfg.data.batch_size, len(cfg.data.sizes))), False
            while step < cfg.schedule.steps:
                t0 = time.perf_counter()
                batch = next(it, None)
                if batch is None:
                    break
                got, micro = True, micro + 1
                self.wait += time.perf_counter() - t0
                self._micro_step(batch)
                if micro % cfg.optim.grad_accum:
                    continue
                step += 1
                if self.ema is not None:
                    self.ema.update()
                maybe_fail(cfg, self.rank, step)
                self._after_step(step)
            if not got and name == "train":  # (an epoch's rest may well be under one batch per worker)
                raise RuntimeError(f"{cfg.data.latents or cfg.data.corpus}: this worker's dataset shard has no full "
                                   f"batch of {cfg.data.batch_size}; the corpus is too small for {cfg.run.workers} "
                                   "worker(s)")
            name, self.epoch = "train", self.epoch + 1
        return step

    def _micro_step(self, batch: dict[str, Any]) -> None:
        t1 = time.perf_counter()
        inputs = self.prep(batch)
        if self.fixed is None and self.cfg.schedule.eval_every:
            self.fixed = inputs
            self.extra["eval_loss_start"] = self.evaluate()
        loss = self.engine(inputs)
        self.engine.backward(loss)
        self.engine.step()
        self.busy += time.perf_counter() - t1
        self.losses.append(float(loss.detach()))
        self.samples += len(batch["txt"])
        self.exemplars += int(batch["ref_mask"].sum()) if self.cfg.data.use_exemplars else 0

    @torch.no_grad()
    def evaluate(self) -> float:
        """Loss on the first batch this worker saw, with fixed noise and times: comparable across steps."""
        self.engine.eval()
        gen = torch.Generator(device=self.prep.device).manual_seed(1234)
        loss = float(self.engine(self.fixed, generator=gen))
        self.engine.train()
        return loss

    def _after_step(self, step: int) -> None:
        sched = self.cfg.schedule
        if sched.eval_every and step % sched.eval_every == 0:
            self.extra["eval_loss"] = self.evaluate()
        if step % sched.log_every and step % sched.checkpoint_every and step != sched.steps:
            return
        dt = time.perf_counter() - self.t_mark
        metrics = {"step": step, "loss": sum(self.losses) / len(self.losses), "samples_per_s": self.samples / dt,
                   "data_wait_fraction": self.wait / max(self.wait + self.busy, 1e-9),
                   "exemplar_fraction": self.exemplars / max(self.samples, 1),
                   "compute_s_per_micro_step": self.busy / max(len(self.losses), 1), **self.constant, **self.extra}
        _report(self.cfg, self.engine, step, self.rank, metrics, self.board, self.writer, self.ema)
        self._reset()


def _report(cfg: TrainConfig, engine: Any, step: int, rank: int, metrics: dict[str, Any], board: Any,
            writer: Any, ema: RankEMA | None = None) -> None:
    """Log on rank 0; every rank reports to Ray Train, with its checkpoint files on checkpoint steps."""
    if writer is not None:
        for k in ("loss", "samples_per_s", "data_wait_fraction", "eval_loss"):
            if k in metrics:
                writer.add_scalar(f"train/{k}", metrics[k], step)
        writer.add_scalar("train/lr", engine.get_lr()[0], step)
    if board is not None:
        board.update.remote(metrics)
    if rank == 0 and not os.environ.get("OMNILV_QUIET"):
        print(f"[{cfg.run_name}] step {step}/{cfg.schedule.steps} loss {metrics['loss']:.4f} "
              f"samples/s {metrics['samples_per_s']:.1f} data-wait {metrics['data_wait_fraction']:.1%}", flush=True)
    if step % cfg.schedule.checkpoint_every and step != cfg.schedule.steps:
        ray.train.report(metrics)
        return
    if writer is not None:
        writer.sync()
    with tempfile.TemporaryDirectory(prefix="omnilv-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag="ds", client_state={"step": step})
        if ema is not None:
            ema.save(tmp)
        if rank == 0:
            (Path(tmp) / STEP_FILE).write_text(str(step))
        mark_complete(tmp, rank, engine.world_size, step)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _resume(engine: Any, world: int, new_ema: Any) -> tuple[int, RankEMA | None]:
    """Load the newest complete checkpoint on every rank: (step to continue from, EMA or None)."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, new_ema() if new_ema else None
    with ckpt.as_directory() as d:
        folder = resolve_resume(d, world)
        if folder is None:
            return 0, new_ema() if new_ema else None
        _, client = engine.load_checkpoint(str(folder), tag="ds", load_module_strict=True)
        ema = new_ema() if new_ema else None  # from the loaded weights, unless the checkpoint has its own
        if ema is not None and not ema.load(folder):
            print(f"checkpoint {folder} has no EMA; the average restarts from the loaded weights", flush=True)
    return int((client or {}).get("step", 0)), ema


class _Board:
    """TensorBoard on rank 0: written locally, and copied to ``storage_path`` when that is remote."""

    def __init__(self, cfg: TrainConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        remote = is_remote(cfg.run.storage_path)
        self.url = join(cfg.run.storage_path, cfg.run_name, "tensorboard") if remote else None
        self.dir = tempfile.mkdtemp(prefix="omnilv-tb-") if remote else join(cfg.run.storage_path, cfg.run_name,
                                                                              "tensorboard")
        self.writer = SummaryWriter(log_dir=self.dir)

    def add_scalar(self, *args: Any) -> None:
        self.writer.add_scalar(*args)

    def sync(self) -> None:
        """Flush, and upload the event files when the run lives on remote storage."""
        self.writer.flush()
        if self.url is not None:
            upload_dir(self.dir, self.url)

    def close(self) -> None:
        self.writer.close()
        self.sync()


# -- checkpoints -----------------------------------------------------------------------------------
def mark_complete(folder: str | Path, rank: int, world: int, step: int) -> None:
    """Written after ``save_checkpoint`` returned: a folder without every rank's marker is partial."""
    (Path(folder) / MARKER.format(rank=rank)).write_text(json.dumps({"step": step, "world": world}))


def is_complete(folder: str | Path, world: int | None = None) -> bool:
    """Every rank's marker present (and the same world size, when given) and DeepSpeed's files there."""
    folder = Path(folder)
    first = folder / MARKER.format(rank=0)
    if not first.is_file() or not (folder / "ds").is_dir():
        return False
    saved = json.loads(first.read_text())["world"]
    if world is not None and saved != world:
        return False
    return all((folder / MARKER.format(rank=r)).is_file() for r in range(saved))


def resolve_resume(folder: str | Path, world: int) -> Path | None:
    """``folder`` if complete, else the newest complete sibling checkpoint (a partial one is never loaded)."""
    folder = Path(folder)
    if is_complete(folder, world):
        return folder
    siblings = sorted((p for p in folder.parent.glob("checkpoint_*") if p != folder),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    for p in siblings:
        if is_complete(p, world):
            print(f"checkpoint {folder} is incomplete; resuming from {p}", flush=True)
            return p
    print(f"checkpoint {folder} is incomplete and no complete one exists; starting from step 0", flush=True)
    return None


# -- model, failure knob, export -------------------------------------------------------------------
def build_flow(cfg: TrainConfig, device: torch.device) -> tuple[Any, Any, Any]:
    """(FlowMatching, codec, text encoder); the net's text/latent widths follow the encoders."""
    from training.encoders import ImageCodec, TextEncoder
    from training.flow import FlowMatching
    from training.models.omnilv import OmniLV

    text, codec = TextEncoder.from_spec(cfg.text), ImageCodec.from_spec(cfg.codec)
    fields = {"cross_attention_dim": text.dim, "in_channels": codec.channels, **cfg.model.overrides}
    torch.manual_seed(cfg.run.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's)
    net = OmniLV.from_preset(cfg.model.preset, **fields)
    if cfg.stage.init_from:
        _init_weights(net, cfg.stage.init_from)
    return FlowMatching(net, **cfg.model.objective).to(device), codec, text


def _init_weights(net: Any, path: str) -> None:
    """Weights only (no optimizer state, step 0) from an exported model folder or a run folder."""
    from training.export import load_network

    folder = path if exists(join(path, "omnilv.json")) else join(path, "export")
    state = load_network(folder).state_dict()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("prompt.")]:
        raise ValueError(f"stage.init_from {path}: weights do not fit this model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); same preset/overrides?")


def maybe_fail(cfg: TrainConfig, rank: int, step: int) -> None:
    """Test-only failure injection: rank 1 (or 0 alone) exits hard once at ``run.fail_at_step``."""
    if not cfg.run.fail_at_step or step != cfg.run.fail_at_step or rank != min(1, cfg.run.workers - 1):
        return
    marker = Path(cfg.run.storage_path) / cfg.run_name / "injected-failure"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(step))
    _await_committed(marker.parent, step - step % cfg.schedule.checkpoint_every)
    os._exit(17)


def _await_committed(run_dir: Path, ckpt_step: int, timeout: float = 60.0) -> None:
    """Ray Train commits a reported checkpoint asynchronously; die only once it is committed, so the test
    proves resume-from-checkpoint rather than racing the controller (a real crash may lose the newest one)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while ckpt_step and time.monotonic() < deadline:
        try:
            done = [r["metrics"].get("step", 0) for r in json.loads(snapshot.read_text())["checkpoint_results"]]
            if max(done, default=0) >= ckpt_step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)


def export_final(cfg: TrainConfig, engine: Any, rank: int, ema: RankEMA | None = None) -> None:
    """Rank 0 exports the trained net (its EMA weights when the run keeps an EMA).

    Under ZeRO-3 every rank first gathers the partitioned parameters; the EMA shares are gathered too.
    A remote export is written to a temp folder and uploaded, ``omnilv.json`` last.
    """
    if not cfg.run.export:
        return
    import deepspeed
    import torch.distributed as dist

    from training.export import export_model

    averaged = ema.gather() if ema is not None else None  # collective: every rank takes part
    params = list(engine.module.parameters())
    gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if cfg.deepspeed.zero_stage == 3 \
        else _Null()
    with gather:
        if rank == 0:
            model = engine.module
            if cfg.deepspeed.precision != "fp32":
                model = fp32_copy(model)
            if averaged is not None:  # the run is over: the live weights are not needed any more
                load_into(model, averaged)
            out = export_dir(cfg)
            with tempfile.TemporaryDirectory(prefix="omnilv-export-") as tmp:
                local = tmp if is_remote(out) else out
                export_model(model, cfg.text, cfg.codec, local, extra={"stage": cfg.stage.name,
                                                                       "trained_in": cfg.deepspeed.precision,
                                                                       **describe(ema)})
                if local != out:
                    upload_dir(local, out)
    dist.barrier()


def fp32_copy(flow: FlowMatching) -> FlowMatching:
    """A float32 twin of a bf16-trained ``flow`` for the export: the EMA (kept in fp32) is loaded into it
    without rounding to bf16; raw weights are the bf16 module's, widened exactly."""
    from training.flow import FlowMatching
    from training.models.omnilv import OmniLV

    net = OmniLV(flow.net.config)
    net.load_state_dict(flow.net.state_dict())  # copy_ widens bf16 -> fp32
    return FlowMatching(net, timestep_sampling=flow.timestep_sampling, text_dropout=flow.text_dropout)


def export_dir(cfg: TrainConfig) -> str:
    return join(cfg.run.storage_path, cfg.run_name, "export")


class _Null:
    """A do-nothing context (no gather, no checkpoint)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
