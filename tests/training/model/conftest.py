"""Shared fixtures of the model tests."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


class _Boom:
    """Unpickling this writes ``path``: proof that a reader ran a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "unpickled!"))


@pytest.fixture
def hostile_pickle(tmp_path) -> tuple[Callable[[Path, str], None], Path]:
    """(write(file, key): a pickled {key: object} whose unpickling creates the canary, canary path)."""
    canary = tmp_path / "canary.txt"

    def write(file: Path, key: str) -> None:
        file.write_bytes(pickle.dumps({key: _Boom(canary)}))

    return write, canary


@pytest.fixture
def eval_inputs(tmp_path, small_image) -> tuple[Path, Path]:
    """(a tiny exported model, a one-shard corpus: an identity pair, a noisy pair, a 16×16 identity pair)."""
    import torch
    import webdataset as wds

    from pipelines.schema import Manifest, Sample, ShardRecord, shard_name
    from training.model import OmniLV
    from training.model.export import export_model
    from training.model.flow import FlowMatching

    torch.manual_seed(0)
    export_model(FlowMatching(OmniLV.from_preset("tiny")), "tiny", "pixel", tmp_path / "model", sampler={"steps": 1})
    rng = np.random.default_rng(0)
    clean = [np.ascontiguousarray(small_image[:48, i * 48:(i + 1) * 48]) for i in range(2)]
    tiny = np.ascontiguousarray(small_image[:16, :16])
    samples = [Sample("id0", clean[0], clean[0], "Keep it.", {"task": "identity"}),
               Sample("nz0", np.clip(clean[1] + rng.normal(0, 0.1, clean[1].shape), 0, 1).astype(np.float32),
                      clean[1], "Remove the noise.", {"task": "noise"}),
               Sample("tn0", tiny, tiny, "Keep it.", {"task": "identity"})]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with wds.TarWriter(str(corpus / shard_name(0))) as tw:
        for s in samples:
            tw.write(s.to_members())
    shard = corpus / shard_name(0)
    (corpus / "manifest.json").write_text(Manifest([ShardRecord(shard.name, len(samples), shard.stat().st_size,
                                                                "0" * 64)]).to_json())
    return tmp_path / "model", corpus
