"""What a corpus holds, sample by sample: keys with their task, domain and exemplar (``omnilv corpus ls``), and
one sample's members written out as files (``omnilv corpus sample``) to look at or to hand to ``omnilv restore``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.read import iter_members, load_manifest
from pipelines.schema import INPUT, JSON, REF_INPUT, REF_TARGET, TARGET, TXT
from pipelines.storage import join

#: Member -> the file name ``corpus sample`` writes it under (fixed names: nothing read from the shard names a file).
FILES = {INPUT: "input.png", TARGET: "target.png", REF_INPUT: "ref_input.png", REF_TARGET: "ref_target.png",
         TXT: "instruction.txt", JSON: "sample.json"}


@dataclass(frozen=True)
class Entry:
    key: str
    shard: str
    task: str
    domain: str
    exemplar: bool
    instruction: str


def list_samples(root: str, storage_options: dict | None = None) -> Iterator[Entry]:
    """Every sample of the manifest-listed shards, in shard order (images are read past, never decoded)."""
    for rec in load_manifest(root, storage_options).shards:
        for members in iter_members(join(root, rec.name), storage_options=storage_options):
            try:
                meta = json.loads(members.get(JSON, b"{}"))
            except ValueError:
                meta = {}
            yield Entry(members["__key__"], rec.name, str(meta.get("task", "?")), str(meta.get("domain", "?")),
                        REF_INPUT in members, members.get(TXT, b"").decode("utf-8", "replace"))


def write_sample(root: str, key: str, out: str | Path, storage_options: dict | None = None) -> dict[str, Path]:
    """The stored members of ``key`` as files in ``out`` (bytes as stored: PNGs stay lossless)."""
    from pipelines.regenerate import find_sample

    _, members = find_sample(root, key, storage_options)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for member, name in FILES.items():
        if member in members:
            (folder / name).write_bytes(members[member])
            written[member] = folder / name
    return written
