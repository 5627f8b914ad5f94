"""Fixtures of the corpus-builder tests: a small quickstart config and one reference build per session."""

from __future__ import annotations

import pytest
from corpus_helpers import small_config


@pytest.fixture(scope="session")
def reference(ray_local, tmp_path_factory):
    """The small quickstart corpus built once, uninterrupted, on 2 workers: what every other build must equal."""
    from pipelines.build import build_corpus

    out = tmp_path_factory.mktemp("reference") / "corpus"
    result = build_corpus(small_config(out), progress=False, workers=2)
    return result
