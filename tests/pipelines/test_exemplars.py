"""An exemplar pair demonstrates the query's transformation: the query's plugins with the query's sampled
parameters, on another source image, its noise from its own seed (a sepia query never gets a noir exemplar)."""

from __future__ import annotations

import pytest
from corpus_helpers import small_config

from pipelines.build import build_corpus
from pipelines.read import iter_samples
from pipelines.regenerate import regenerate


@pytest.fixture(scope="module")
def exemplar_corpus(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("exemplars") / "corpus"
    cfg = small_config(out, "mixture.exemplar_probability=1.0", "mixture.default_weight=0",
                       "mixture.tasks={color_grading: 1.0, gaussian_noise: 1.0}")
    return build_corpus(cfg, progress=False, workers=2).root


def test_every_exemplar_replays_the_query_parameters_on_other_content(exemplar_corpus):
    samples = list(iter_samples(exemplar_corpus))
    with_ref = [s for s in samples if s.ref_input is not None]
    assert len(with_ref) >= len(samples) - 2  # a shard's only source has no other photo to show
    for s in with_ref:
        query, ref = s.meta["steps"], s.meta["exemplar"]["steps"]
        assert [(q["name"], q["params"]) for q in query] == [(r["name"], r["params"]) for r in ref], s.key
        assert s.meta["exemplar"]["source"] != s.meta["source"]
        if s.meta["task"] == "gaussian_noise":  # stochastic part: its own noise field
            assert all(q["seed"] != r["seed"] for q, r in zip(query, ref, strict=True))


def test_exemplars_regenerate_from_their_json(exemplar_corpus):
    key = next(s.key for s in iter_samples(exemplar_corpus) if s.ref_input is not None)
    res = regenerate(exemplar_corpus, key)
    assert res.ok and {"ref_input.png", "ref_target.png"} <= set(res.checks)
