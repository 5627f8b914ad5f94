"""TensorBoard scalars on rank 0: written locally, and copied to ``run.storage_path`` when that is remote."""

from __future__ import annotations

import tempfile
from typing import Any

from pipelines import is_remote, join, upload_dir
from training.config import TrainConfig

SCALARS = ("loss", "samples_per_s", "data_wait_fraction", "eval_loss")


class TensorBoardLog:
    """The run's event files under ``<storage_path>/<run>/tensorboard``."""

    def __init__(self, cfg: TrainConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = join(cfg.run.storage_path, cfg.run_name, "tensorboard")
        self.url = folder if is_remote(folder) else None
        self.dir = tempfile.mkdtemp(prefix="omnilv-tb-") if self.url else folder
        self.writer = SummaryWriter(log_dir=self.dir)

    def log(self, step: int, metrics: dict[str, Any], lr: float) -> None:
        for k in SCALARS:
            if k in metrics:
                self.writer.add_scalar(f"train/{k}", metrics[k], step)
        self.writer.add_scalar("train/lr", lr, step)

    def sync(self) -> None:
        """Flush, and upload the event files when the run lives on remote storage."""
        self.writer.flush()
        if self.url is not None:
            upload_dir(self.dir, self.url)

    def close(self) -> None:
        self.writer.close()
        self.sync()
