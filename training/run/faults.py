"""A test hook, not a feature: one worker exits hard once at a given step, to prove failure recovery.

The driver takes ``train(cfg, fault_at_step=k)`` (never a config field) and hands it to the workers. Rank 1
(rank 0 when alone) waits until the checkpoint before step ``k`` is committed, then calls ``os._exit`` once per
run folder (a marker file keeps the restarted worker group from dying again).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from training.config import TrainConfig
from training.run.checkpoint import SNAPSHOT


class FaultHook:
    """Kill this worker once at ``at_step`` (0: never)."""

    def __init__(self, cfg: TrainConfig, rank: int, at_step: int) -> None:
        self.cfg, self.at_step = cfg, at_step
        self.armed = bool(at_step) and rank == min(1, cfg.run.workers - 1)

    def __call__(self, step: int) -> None:
        if not self.armed or step != self.at_step:
            return
        marker = Path(self.cfg.run.storage_path) / self.cfg.run_name / "injected-failure"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        await_committed(marker.parent, step - step % self.cfg.schedule.checkpoint_every)
        os._exit(17)


def await_committed(run_dir: Path, ckpt_step: int, timeout: float = 60.0) -> None:
    """Ray Train commits a reported checkpoint asynchronously; die only once it is committed, so the test
    proves resume-from-checkpoint rather than racing the controller (a real crash may lose the newest one)."""
    snapshot = run_dir / SNAPSHOT
    deadline = time.monotonic() + timeout
    while ckpt_step and time.monotonic() < deadline:
        try:
            done = [r["metrics"].get("step", 0) for r in json.loads(snapshot.read_text())["checkpoint_results"]]
            if max(done, default=0) >= ckpt_step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
