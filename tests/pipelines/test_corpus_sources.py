"""Source kinds: jsonl and parquet list files, an s3:// prefix, and the clean images of an existing corpus."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from corpus_helpers import small_config

from degradations.samples import sample_paths
from pipelines.build import build_corpus
from pipelines.read import iter_samples
from pipelines.sources import fetch, list_sources
from pipelines.storage import s3_options


def test_list_files_s3_prefix_and_corpus_sources(reference, s3_server, ray_local, tmp_path):
    photos = sample_paths()[:4]
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in photos[:2]) + "\n")
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in photos[2:4]]}), table)
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    fs.call_s3("create_bucket", Bucket="clean-photos")
    for p in photos[:3]:
        fs.pipe_file(f"clean-photos/raw/{p.name}", p.read_bytes())
    fs.pipe_file("clean-photos/raw/README.txt", b"not an image: filtered out by extension")
    sources = (f"[{{uri: '{listing}'}}, {{uri: '{table}', column: path}}, {{uri: 's3://clean-photos/raw'}},"
               f" {{uri: 'shards://{reference.root}', limit: 3}}]")
    cfg = small_config(tmp_path / "out", f"sources={sources}", "variants_per_source=1")

    uris = list_sources(cfg, s3_options())
    assert len(uris) == 4 + 3 + 3 and uris == sorted(uris)
    assert sum(u.startswith("s3://clean-photos/raw/") for u in uris) == 3
    corpus_items = [u for u in uris if u.startswith("shard://")]
    assert all(u.endswith(".target.png") for u in corpus_items)
    assert fetch(corpus_items[0]).startswith(b"\x89PNG")

    res = build_corpus(cfg, progress=False)
    assert res.manifest.samples == 10 and not res.manifest.extra["rejects"]
    assert {s.meta["source"] for s in iter_samples(res.root)} == set(uris)
