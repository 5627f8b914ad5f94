"""What a run is: its paths made absolute before any worker sees them, and the record that keeps a rerun honest.

A rerun with the same run name resumes. That is right only when it trains the same thing: ``omnilv_run.json`` in
the run folder keeps the config the run started with (what it learns from and how), and a rerun that differs in
any of those fields is refused with the fields named, instead of resuming the old run or silently starting over
(a changed world size would otherwise make every ZeRO checkpoint unloadable and restart from step 0). How long it
runs (``schedule``) and how it is operated (failures, logging, read parallelism) may change between reruns.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipelines import ConfigError, Store, is_remote, join, read_text, s3_options
from training.config import TrainConfig

RECORD = "omnilv_run.json"
#: Fields a rerun may change: how long and how it runs, not what it learns.
MAY_CHANGE = {"schedule": True, "run": {"max_failures", "keep_checkpoints", "log_level", "export",
                                        "cpus_per_worker", "use_gpu"},
              "data": {"read_cpus", "max_read_tasks", "materialize"}}


def absolute(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its local paths absolute (relative ones mean the user's current folder, on every worker).

    ``stage.init_from`` without a ``/`` names a run on the same storage: ``init_from: stage1`` is
    ``<run.storage_path>/stage1/export``.
    """
    def fix(path: str) -> str:
        return path if not path or is_remote(path) else os.path.abspath(path.removeprefix("file://"))

    storage, init = fix(cfg.run.storage_path), cfg.stage.init_from
    init = fix(init) if "/" in init or is_remote(init) else join(storage, init, "export") if init else ""
    return cfg.model_copy(update={
        "run": cfg.run.model_copy(update={"storage_path": storage}),
        "data": cfg.data.model_copy(update={"corpus": fix(cfg.data.corpus), "latents": fix(cfg.data.latents)}),
        "stage": cfg.stage.model_copy(update={"init_from": init})})


def learned(cfg: TrainConfig) -> dict[str, Any]:
    """The fields that decide what a run learns (the config without :data:`MAY_CHANGE`)."""
    return cfg.model_dump(mode="json", exclude=MAY_CHANGE)


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_rerun(cfg: TrainConfig) -> None:
    """Write the run's record on its first start; refuse a rerun of the same name that would learn otherwise."""
    folder = join(cfg.run.storage_path, cfg.run_name)
    text = read_text(join(folder, RECORD))
    now = learned(cfg)
    if text is None:
        Store(folder, s3_options() if is_remote(folder) else None).write(RECORD, json.dumps(
            {"config": now}, indent=1, sort_keys=True).encode())
        return
    try:
        old = json.loads(text)["config"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{join(folder, RECORD)}: not a run record omnilv wrote; is {folder} another tool's "
                          "folder? Pick another run.name or storage_path.") from None
    changed = differences(old, now)
    if changed:
        raise ConfigError(
            f"{folder} holds run {cfg.run_name!r} started with another config, so this would not resume it:\n  "
            + "\n  ".join(changed[:12]) + f"\nTrain it under another name (--set run.name={cfg.run_name}-2), or "
            "delete that run folder to start it again.")
