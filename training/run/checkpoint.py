"""Checkpoints of a run: save through ``ray.train.report``, resume only from a complete one.

Every ``checkpoint_every`` steps each rank calls ``engine.save_checkpoint`` into its own temp folder, saves its
EMA share, writes a completion marker, and all ranks ``ray.train.report(..., checkpoint=...)``; Ray merges the
ranks' files into one checkpoint folder. A resume loads a folder only when every rank's marker is there, else the
newest complete sibling. The driver reads the newest committed step to place a rerun's data
(:func:`resume_plan`).

A checkpoint is data, not code: ``run.storage_path`` may be a shared ``s3://`` prefix, and whoever can write there
must not be able to run code on every worker at the next rerun. DeepSpeed reads its files with
``torch.load(weights_only=False)``; :func:`resume` swaps in :func:`load_weights_only`, which unpickles only
tensors, plain containers and the three DeepSpeed state types its ZeRO optimizer saves (:data:`DEEPSPEED_TYPES`).
The EMA is safetensors, the step a text file.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import ray.train
import torch

from omnilv.errors import OmniLVError
from pipelines import join, load_manifest, read_text
from training.config import TrainConfig
from training.run.ema import RankEMA

STEP_FILE = "step.txt"
MARKER = "COMPLETE.rank{rank}"
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the run's committed checkpoints
#: The only non-container types in a DeepSpeed 0.19 ZeRO 0-3 checkpoint (fp32 or bf16), found with
#: ``torch.serialization.get_unsafe_globals_in_checkpoint`` on each file it writes.
DEEPSPEED_TYPES = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.utils.tensor_fragment.fragment_address",
                   "deepspeed.runtime.zero.config.ZeroStageEnum")


class UnsafeCheckpoint(OmniLVError):
    """A checkpoint file holds something other than tensors and DeepSpeed's own state: it is not loaded."""


def load_weights_only(path: str, map_location: Any = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and :data:`DEEPSPEED_TYPES` allowed; anything else is refused
    before it is constructed."""
    allowed = [getattr(import_module(mod), name) for mod, _, name in (t.rpartition(".") for t in DEEPSPEED_TYPES)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(f"{path}: refusing to load this checkpoint: it holds objects other than tensors "
                               f"and DeepSpeed's state ({why}). Checkpoints are data; if this run did not write it, "
                               "delete it (or start the run under another name).") from None


def save(engine: Any, ema: RankEMA | None, rank: int, step: int, metrics: dict[str, Any]) -> None:
    """Every rank: write its checkpoint files and report them with ``metrics`` (a collective)."""
    with tempfile.TemporaryDirectory(prefix="omnilv-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag="ds", client_state={"step": step})
        if ema is not None:
            ema.save(tmp)
        if rank == 0:
            (Path(tmp) / STEP_FILE).write_text(str(step))
        mark_complete(tmp, rank, engine.world_size, step)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def resume(engine: Any, world: int, new_ema: Callable[[], RankEMA] | None) -> tuple[int, RankEMA | None]:
    """Load the newest complete checkpoint on every rank: (step to continue from, EMA or None).

    DeepSpeed reads the files through :func:`load_weights_only` (never a plain unpickler)."""
    engine.checkpoint_engine.load = load_weights_only
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


def committed_step(cfg: TrainConfig) -> int:
    """The step of the run's newest committed checkpoint (what a rerun resumes from), 0 if none."""
    text = read_text(join(cfg.run.storage_path, cfg.run_name, SNAPSHOT))
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
