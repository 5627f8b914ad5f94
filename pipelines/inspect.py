"""``omnilv corpus inspect``: verify a corpus against its manifest and summarise it."""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipelines.read import load_manifest, split_member
from pipelines.schema import MEMBERS, REQUIRED_MEMBERS, Manifest, SchemaError


@dataclass
class Inspection:
    """What ``inspect`` found: ``problems`` empty means every listed shard matches the manifest."""

    manifest: Manifest
    problems: list[str] = field(default_factory=list)
    samples: int = 0
    bytes: int = 0
    members: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shard(url: str, rec: Any, storage_options: dict | None = None) -> tuple[list[str], int, Counter]:
    """Stream one shard: its sha256, byte count and sample count against the manifest row."""
    h, size = hashlib.sha256(), 0
    keys: list[str] = []
    members: Counter = Counter()
    problems = []
    opts = dict(storage_options or {}) if url.startswith("s3://") else {}
    try:
        with fsspec.open(url, "rb", **opts) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    except FileNotFoundError:
        return [f"{rec.name}: listed in the manifest but missing"], 0, members
    if size != rec.bytes:
        problems.append(f"{rec.name}: {size} bytes, manifest says {rec.bytes}")
    if h.hexdigest() != rec.sha256:
        problems.append(f"{rec.name}: sha256 {h.hexdigest()[:12]}… != manifest {rec.sha256[:12]}…")
        return problems, 0, members
    from pipelines.read import iter_member_names

    for name in iter_member_names(url, opts):
        key, member = split_member(name)
        members[member] += 1
        if not keys or keys[-1] != key:
            keys.append(key)
    if len(keys) != rec.samples or len(set(keys)) != len(keys):
        problems.append(f"{rec.name}: {len(keys)} samples ({len(set(keys))} distinct keys), manifest says "
                        f"{rec.samples}")
    for m in REQUIRED_MEMBERS:
        if members[m] != len(keys):
            problems.append(f"{rec.name}: {members[m]} {m} members for {len(keys)} samples")
    return problems, len(keys), members


def inspect_corpus(root: str, storage_options: dict | None = None) -> Inspection:
    """Verify every manifest-listed shard (sha256, bytes, samples, members); never raises on a bad shard."""
    manifest = load_manifest(root, storage_options)
    from pipelines.read import join

    result = Inspection(manifest)
    names = [s.name for s in manifest.shards]
    if len(set(names)) != len(names):
        result.problems.append("manifest lists a shard twice")
    for rec in manifest.shards:
        try:
            problems, n, members = check_shard(join(root, rec.name), rec, storage_options)
        except (OSError, SchemaError, EOFError, tarfile.TarError) as exc:  # a cut-short tar is a problem, not a crash
            problems, n, members = [f"{rec.name}: unreadable: {exc}"], 0, Counter()
        result.problems.extend(problems)
        result.samples += n
        result.bytes += rec.bytes
        result.members.update(members)
    unknown = {m for m in result.members if m not in MEMBERS}
    if unknown:
        result.problems.append(f"members outside the schema: {sorted(unknown)}")
    return result
