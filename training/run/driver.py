"""The driver of ``omnilv train``: a Ray Train ``TorchTrainer`` over the corpus, one DeepSpeed engine per worker.

It reads the manifest-listed shards with Ray Data (:func:`training.data.make_datasets`), hands them to Ray Train
(``DataConfig`` streaming-splits them across workers, each running :func:`training.run.worker.train_loop_per_worker`),
and shows a rich progress bar fed by a tiny :class:`ProgressBoard` actor that rank 0 updates. Ray's own output stays
in its log files (:func:`pipelines.ensure_ray`); a failed run raises Ray Train's error, each worker's traceback in it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from pipelines import SkipLedger, arrow_filesystem, arrow_path, ensure_ray
from training.config import TrainConfig
from training.data import make_datasets
from training.run.checkpoint import resume_plan
from training.run.export_final import export_dir
from training.run.record import absolute, check_rerun
from training.run.worker import train_loop_per_worker

#: Added to a failed run's error: ``ensure_ray`` keeps the workers' console output out of ours.
WORKER_OUTPUT = ("The workers' own output is in Ray's log files (/tmp/ray/session_latest/logs by default, on each "
                 "node); set RAY_LOG_TO_DRIVER=1 to see it here.")


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


def forwarded_env() -> dict[str, str]:
    """The driver's ``AWS_*`` settings, for workers of a Ray instance started before they were exported
    (on a cluster the nodes' own environment or instance role provides them)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def make_trainer(cfg: TrainConfig, board: Any = None, ledger: Any = None, fault_at_step: int = 0):
    """The configured ``TorchTrainer`` (not started); ``fault_at_step`` is a test hook (:mod:`training.run.faults`)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not cfg.data.corpus and not cfg.data.latents:
        raise ValueError("data.corpus is empty: point it at a corpus folder or s3:// prefix (--set data.corpus=…)")
    # Our own progress bar reports training; Ray Data's per-operator bars would interleave with it.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    resume = resume_plan(cfg)
    datasets = make_datasets(cfg, ledger, skip_shards=resume["shards"])
    storage, filesystem = arrow_path(cfg.run.storage_path), arrow_filesystem(cfg.run.storage_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "board": board,
                           "resume": resume, "ledger": ledger, "fault_at_step": fault_at_step},
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        # Credentials reach the workers through their runtime environment, never through the loop config (which
        # Ray keeps and can show on its dashboard).
        run_config=RunConfig(name=cfg.run_name, storage_path=storage, storage_filesystem=filesystem,
                             worker_runtime_env={"env_vars": forwarded_env()},
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
                             logging_config=LoggingConfig(log_level=cfg.run.log_level)),
        datasets=datasets,
        # The driver's options, given: Ray's default copies them through the deprecated exclude_resources.
        dataset_config=DataConfig(datasets_to_split=list(datasets), execution_options=context.execution_options),
    )


def run_stage(cfg: TrainConfig, *, address: str | None = None, progress: bool = True,
              fault_at_step: int = 0) -> TrainResult:
    """Run one stage to ``schedule.steps`` (resuming from the run's latest checkpoint); returns its result.

    ``fault_at_step`` is a test hook: one worker dies once at that step (:mod:`training.run.faults`).
    """
    from ray.train import TrainingFailedError

    cfg = absolute(cfg)  # before any worker sees a path
    check_rerun(cfg)
    ensure_ray(address)
    board, ledger = ProgressBoard.remote(), SkipLedger.remote()
    trainer = make_trainer(cfg, board, ledger, fault_at_step)
    t0 = time.perf_counter()
    try:
        result = _fit_with_progress(trainer, board, cfg.schedule.steps) if progress else trainer.fit()
    except TrainingFailedError as exc:  # it carries each failed worker's traceback
        exc.add_note(WORKER_OUTPUT)
        raise
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
