"""``omnilv train``: a Ray Train ``TorchTrainer`` over the corpus, one DeepSpeed engine per worker.

The driver reads the manifest-listed shards with Ray Data (:func:`pipelines.ingest.read_corpus`),
hands them to Ray Train (``DataConfig`` streaming-splits them across workers), and shows a rich
progress bar fed by a tiny :class:`ProgressBoard` actor that rank 0 updates.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from training.config import TrainConfig
from training.loop import export_dir, train_loop_per_worker
from training.runstore import join, ray_storage, read_text


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest metrics rank 0 reported; the driver polls it for the progress bar."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def update(self, metrics: dict[str, Any]) -> None:
        self.metrics = dict(metrics)

    def get(self) -> dict[str, Any]:
        return self.metrics


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    metrics: dict[str, Any]
    checkpoint: str | None
    export: str | None
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def ensure_ray(address: str | None = None) -> None:
    """Join ``address`` / ``$RAY_ADDRESS``, else start a private local instance — never a bare ``ray.init()``."""
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True,
                 include_dashboard=False, configure_logging=False)


def forwarded_env() -> dict[str, str]:
    """The driver's ``AWS_*`` settings, for workers of a Ray instance started before they were exported
    (on a cluster the nodes' own environment or instance role provides them)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def committed_step(cfg: TrainConfig) -> int:
    """The step of the run's newest committed checkpoint (what a rerun resumes from), 0 if none."""
    text = read_text(join(cfg.run.storage_path, cfg.run_name, "checkpoint_manager_snapshot.json"))
    if not text:
        return 0
    try:
        results = json.loads(text).get("checkpoint_results", [])
        return max((int(r.get("metrics", {}).get("step", 0)) for r in results), default=0)
    except (ValueError, AttributeError, TypeError):
        return 0  # an unreadable snapshot only costs the resume its data position, never the run


def resume_plan(cfg: TrainConfig) -> dict[str, int]:
    """Where a rerun picks up the data: whole manifest shards already read in the interrupted epoch are left
    out of its first pass. Approximate (Ray Data reads shards concurrently), but a run that is stopped and
    rerun many times no longer reads the corpus's (or latent cache's) first shards again each time.
    ``epoch_samples`` (the manifest's sample count) lets each worker number its passes from its step."""
    from pipelines.read import load_manifest

    step = committed_step(cfg)
    counts = [s.samples for s in load_manifest(cfg.data.latents or cfg.data.corpus).shards]
    plan = {"step": step, "shards": 0, "samples": 0, "epoch_samples": sum(counts)}
    if not step:
        return plan
    offset = step * cfg.global_batch % max(sum(counts), 1)
    for n in counts[:-1]:  # always keep at least one shard
        if plan["samples"] + n > offset:
            break
        plan["shards"] += 1
        plan["samples"] += n
    return plan


def make_datasets(cfg: TrainConfig, ledger: Any = None) -> tuple[dict[str, Any], dict[str, int]]:
    """({"train": every sample[, "resume": the interrupted epoch's unread shards]}, the resume plan)."""
    from functools import partial

    from pipelines.ingest import read_corpus

    d = cfg.data
    if d.latents:  # already encoded: checked against this config's codec/text/sizes, then read
        from training.latents_read import training_dataset

        read = partial(training_dataset, cfg, ledger)
    else:
        read = partial(read_corpus, d.corpus, d.sizes, random_crop=d.random_crop, use_exemplars=d.use_exemplars,
                       seed=cfg.run.seed, read_cpus=d.read_cpus, max_tasks=d.max_read_tasks, ledger=ledger)
    datasets, resume = {"train": read()}, resume_plan(cfg)
    if resume["shards"]:  # the rest of the interrupted epoch first, then full epochs
        datasets["resume"] = read(skip_shards=resume["shards"])
    if d.materialize:
        datasets = {k: v.materialize() for k, v in datasets.items()}
    return datasets, resume


def make_trainer(cfg: TrainConfig, board: Any = None, ledger: Any = None):
    """The configured ``TorchTrainer`` (not started)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not cfg.data.corpus and not cfg.data.latents:
        raise ValueError("data.corpus is empty: point it at a corpus folder or s3:// prefix (--set data.corpus=…)")
    # Our own progress bar reports training; Ray Data's per-operator bars would interleave with it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets, resume = make_datasets(cfg, ledger)
    storage, filesystem = ray_storage(cfg.run.storage_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "board": board, "env": forwarded_env(),
                           "resume": resume, "ledger": ledger},
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        run_config=RunConfig(name=cfg.run_name, storage_path=storage, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
                             logging_config=LoggingConfig(log_level=cfg.run.log_level)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets)),
    )


def train(cfg: TrainConfig, *, address: str | None = None, progress: bool = True) -> TrainResult:
    """Run one stage to ``schedule.steps`` (resuming from the run's latest checkpoint); returns its result."""
    from pipelines.ingest import SkipLedger

    ensure_ray(address)
    board, ledger = ProgressBoard.remote(), SkipLedger.remote()
    trainer = make_trainer(cfg, board, ledger)
    t0 = time.perf_counter()
    result = _fit_with_progress(trainer, board, cfg.schedule.steps) if progress else trainer.fit()
    if result.error is not None:
        raise result.error
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    export = export_dir(cfg) if cfg.run.export else None
    return TrainResult(dict(result.metrics or {}), ckpt, export, ray.get(ledger.totals.remote()),
                       time.perf_counter() - t0)


def _fit_with_progress(trainer: Any, board: Any, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=total, info="starting workers…")
        while thread.is_alive():
            thread.join(timeout=1.0)
            m = ray.get(board.get.remote())
            if m:
                bar.update(task, completed=m["step"],
                           info=f"loss {m['loss']:.4f}  {m['samples_per_s']:.1f} samples/s")
    if "error" in box:
        raise box["error"]
    return box["result"]
