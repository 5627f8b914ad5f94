"""The Ray datasets a run trains on: the corpus (decoded and cropped) or its latent cache."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from pipelines import read_corpus

if TYPE_CHECKING:
    from training.config import TrainConfig


def make_datasets(cfg: TrainConfig, ledger: Any = None, skip_shards: int = 0) -> dict[str, Any]:
    """{"train": every sample[, "resume": the manifest's shards after the first ``skip_shards``]}.

    A rerun reads the rest of its interrupted epoch ("resume") first, then full epochs ("train").
    """
    d = cfg.data
    if d.latents:  # already encoded: checked against this config's codec/text/sizes, then read
        from training.data.latent_read import training_dataset

        read = partial(training_dataset, cfg, ledger)
    else:
        read = partial(read_corpus, d.corpus, d.sizes, random_crop=d.random_crop, use_exemplars=d.use_exemplars,
                       seed=cfg.run.seed, read_cpus=d.read_cpus, max_tasks=d.max_read_tasks, ledger=ledger,
                       keep_json=cfg.model.recipe == "lumen")
    datasets = {"train": read()}
    if skip_shards:
        datasets["resume"] = read(skip_shards=skip_shards)
    if d.materialize:
        datasets = {k: v.materialize() for k, v in datasets.items()}
    return datasets
