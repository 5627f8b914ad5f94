"""Listing clean source images and fetching their bytes.

A source's stable id is its URI. Listings are sorted, so the shard a source lands
in depends only on the config and the set of sources, never on listing order.
URI forms: a local path or ``file://`` path, ``s3://bucket/key``, ``samples://NAME``
(a bundled scikit-image photo) and ``shard://<shard url>#<key>.<member>`` (a clean
image inside an existing corpus).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import fsspec

from pipelines.config import CorpusConfig, SourceSpec
from pipelines.configfile import ConfigError

SAMPLES = "samples://"
SHARDS = "shards://"
SHARD_ITEM = "shard://"


def list_sources(cfg: CorpusConfig, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every source URI of ``cfg``, de-duplicated and sorted."""
    uris: set[str] = set()
    for spec in cfg.sources:
        found = sorted(set(_list_spec(spec, storage_options or {})))
        uris.update(found[: spec.limit] if spec.limit else found)
    if not uris:
        raise ConfigError(f"sources: no images found in {[s.uri for s in cfg.sources]}")
    return sorted(uris)


def _list_spec(spec: SourceSpec, opts: dict[str, Any]) -> list[str]:
    uri = spec.uri
    exts = tuple(e.lower() for e in spec.extensions)
    if uri.startswith(SAMPLES):
        from degradations import sample_paths

        return [SAMPLES + p.name for p in sample_paths()]
    if uri.startswith(SHARDS):
        return _list_corpus(uri[len(SHARDS):], spec.member, opts)
    if uri.endswith((".jsonl", ".parquet")):
        return _list_file(uri, spec.column, opts)
    if uri.startswith("s3://"):
        fs = fsspec.filesystem("s3", **opts)
        keys = fs.find(uri.rstrip("/"))
        return ["s3://" + k for k in keys if k.lower().endswith(exts)]
    local = uri.removeprefix("file://")
    if any(c in local for c in "*?["):
        paths = glob.glob(local, recursive=True)
    elif os.path.isdir(local):
        paths = [str(p) for p in Path(local).rglob("*") if p.is_file()]
    else:
        raise ConfigError(f"sources.uri: {uri!r} is not a folder, glob, s3:// prefix, list file or {SHARDS} corpus")
    return [str(Path(p).resolve()) for p in paths if p.lower().endswith(exts)]


def _list_file(uri: str, column: str, opts: dict[str, Any]) -> list[str]:
    """URIs from a jsonl (one object or string per line) or parquet list file."""
    so = opts if uri.startswith("s3://") else {}
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb", **so) as f:
            table = pq.read_table(f, columns=[column])
        return [str(v) for v in table.column(column).to_pylist() if v]
    out = []
    with fsspec.open(uri, "rt", encoding="utf-8", **so) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{uri}:{n}: not JSON: {exc}") from None
            value = row.get(column) if isinstance(row, dict) else row
            if not isinstance(value, str):
                raise ConfigError(f"{uri}:{n}: expected a string or an object with {column!r}")
            out.append(value)
    return out


def _list_corpus(root: str, member: str, opts: dict[str, Any]) -> list[str]:
    """One ``shard://`` URI per sample of an existing corpus (only manifest-listed shards)."""
    from pipelines.read import iter_member_names, load_manifest, shard_urls

    so = opts if root.startswith("s3://") else {}
    out = []
    for url in shard_urls(root, load_manifest(root, so)):
        out.extend(f"{SHARD_ITEM}{url}#{name}" for name in iter_member_names(url, so) if name.endswith("." + member))
    return out


def fetch(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The raw bytes of a source URI (raises ``OSError`` when it cannot be read)."""
    if uri.startswith(SAMPLES):
        from degradations import data_dir

        return (data_dir() / uri[len(SAMPLES):]).read_bytes()
    if uri.startswith(SHARD_ITEM):
        url, _, name = uri[len(SHARD_ITEM):].rpartition("#")
        so = storage_options or {} if url.startswith("s3://") else {}
        with fsspec.open(url, "rb", **so) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for info in tar:
                if info.name == name and info.isfile():
                    data = tar.extractfile(info)
                    return data.read() if data is not None else b""
        raise FileNotFoundError(f"{name} not in {url}")
    if uri.startswith("s3://"):
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return f.read()
    with open(uri.removeprefix("file://"), "rb") as f:
        return f.read()
