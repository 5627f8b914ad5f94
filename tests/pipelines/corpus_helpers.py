"""Helpers shared by the corpus-builder tests."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import CorpusConfig, load_corpus_config

#: The quickstart with small shards, so a build has ~10 shards to kill / resume in between.
SMALL = ("output.samples_per_shard=4", "runtime.contact_sheet_rows=2")


def small_config(out: str | Path, *extra: str) -> CorpusConfig:
    return load_corpus_config(None, [*SMALL, f"output.path={out}", *extra])


def corpus_files(root: str | Path) -> dict[str, bytes]:
    """The deterministic part of a corpus: its shards and manifest, by name."""
    root = Path(root)
    names = sorted(p.name for p in root.glob("shard-*.tar")) + ["manifest.json"]
    return {n: (root / n).read_bytes() for n in names}
