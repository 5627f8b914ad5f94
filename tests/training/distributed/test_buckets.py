"""Several resolution buckets over 2 workers: the ranks fill batches at their own pace, yet no rank waits forever
in a collective (fault matrix #17: a hang until NCCL's timeout on GPUs)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.schema import Sample
from tests.training.distributed.conftest import write_corpus
from training.config import load_train_config
from training.run import run_stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def mixed_corpus(root, img: np.ndarray):
    """40 samples in 5 shards: squares, wide and tall crops in uneven numbers, so every rank's buckets differ."""
    rng = np.random.default_rng(0)
    shapes = [(24, 24)] * 22 + [(16, 32)] * 11 + [(32, 16)] * 7
    order = rng.permutation(len(shapes))
    samples = []
    for i in order:
        h, w = shapes[i]
        y, x = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
        clean = np.ascontiguousarray(img[y:y + h, x:x + w], dtype=np.float32)
        noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
        samples.append(Sample(f"k{i:04d}", noisy, clean, "Remove the noise.", {"task": "denoise"}).to_members(level=1))
    return write_corpus(root, [samples[j:j + 8] for j in range(0, 40, 8)])


def test_uneven_buckets_end_every_pass_together(ray_local, small_image, tmp_path):
    corpus = mixed_corpus(tmp_path / "corpus", small_image)
    cfg = load_train_config({
        "data": {"corpus": str(corpus), "buckets": [[16, 16], [12, 24], [24, 12]], "batch_size": 3},
        "schedule": {"steps": 12, "checkpoint_every": 12, "log_every": 4},  # several passes: epochs end unevenly
        "stage": {"name": "buckets"},
        "run": {"workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp_path / "runs"), "max_failures": 0}})
    res = run_stage(cfg, progress=False)
    assert res.metrics["step"] == 12 and res.metrics["epoch"] >= 1
