"""Reading a corpus back: the manifest, the shards it lists, and their samples.

Readers trust only ``manifest.json``: a shard on disk that the manifest does not
list (a crash left it, or a build is still running) is never read. Only the
members in :data:`pipelines.schema.MEMBERS` are decoded; anything else (``.pyd``,
``.pickle``, …) is skipped and counted, never deserialised.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

from pipelines.schema import IMAGE_MEMBERS, MANIFEST, MEMBERS, Manifest, Sample, SchemaError
from pipelines.storage import credentials_as_errors, join

log = logging.getLogger(__name__)
#: ``KEY.x.input.png``: what a member of a sample whose key has a dot looks like.
_DOTTED = tuple(f".{m}" for m in IMAGE_MEMBERS)


@dataclass
class ReadStats:
    """What a reader skipped, by reason (e.g. ``member:pickle``, ``corrupt:input.png``)."""

    samples: int = 0
    skipped: Counter = field(default_factory=Counter)


def _opts(url: str, storage_options: dict | None) -> dict:
    return dict(storage_options or {}) if url.startswith("s3://") else {}


def load_manifest(root: str, storage_options: dict | None = None) -> Manifest:
    """The manifest of the corpus at ``root`` (local folder or ``s3://`` prefix)."""
    url = join(root, MANIFEST)
    try:
        with credentials_as_errors(url), fsspec.open(url, "rt", encoding="utf-8", **_opts(url, storage_options)) as f:
            text = f.read()
    except FileNotFoundError:
        raise SchemaError(f"{url}: no manifest; is {root!r} a finished omnilv corpus? "
                          "(a build writes manifest.json last)") from None
    return Manifest.from_json(text, url)


def shard_urls(root: str, manifest: Manifest | None = None) -> list[str]:
    """URLs of the shards the manifest lists, in manifest order."""
    manifest = manifest or load_manifest(root)
    return [join(root, s.name) for s in manifest.shards]


def split_member(name: str) -> tuple[str, str]:
    """``KEY.input.png`` -> (``KEY``, ``input.png``): keys have no dots, so split at the first."""
    base = posixpath.basename(name)
    key, _, member = base.partition(".")
    return key, member


def iter_member_names(url: str, storage_options: dict | None = None) -> Iterator[str]:
    """Names of the regular-file members of one tar shard, in order (no member is read)."""
    with fsspec.open(url, "rb", **_opts(url, storage_options)) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        for info in tar:
            if info.isfile():
                yield info.name


def iter_members(url: str, stats: ReadStats | None = None,
                 storage_options: dict | None = None) -> Iterator[dict[str, bytes]]:
    """Raw WebDataset dicts (``__key__`` + whitelisted members) from one tar shard, streamed.

    A sample's members must be adjacent and its key free of dots (WebDataset groups adjacent members by the
    name before the first dot): a shard that breaks either is a :class:`SchemaError`, never a fragment read as a
    sample. A shard that ends early raises ``tarfile.ReadError``/``EOFError`` before its last, incomplete sample.
    """
    stats = stats if stats is not None else ReadStats()
    current: dict[str, bytes] = {}
    done: set[str] = set()
    with fsspec.open(url, "rb", **_opts(url, storage_options)) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, member = split_member(info.name)
            if member not in MEMBERS and member.endswith(_DOTTED):
                raise SchemaError(f"{url}: member {info.name!r} has a dotted sample key; keys may not contain dots")
            if current and current["__key__"] != key:
                done.add(current["__key__"])
                yield current
                current = {}
            if key in done:
                raise SchemaError(f"{url}: member {info.name!r} is not next to the other members of sample {key!r}; "
                                  "a sample's members must be adjacent in its shard")
            if not current:
                current = {"__key__": key}
            if member not in MEMBERS:
                stats.skipped[f"member:{member.rsplit('.', 1)[-1] or member}"] += 1
                continue
            data = tar.extractfile(info)
            current[member] = data.read() if data is not None else b""
    if current:
        yield current


def iter_samples(root: str, stats: ReadStats | None = None, storage_options: dict | None = None,
                 limit_shards: int | None = None) -> Iterator[Sample]:
    """Decoded samples of every manifest-listed shard; a bad sample is skipped and counted."""
    stats = stats if stats is not None else ReadStats()
    urls = shard_urls(root, load_manifest(root, storage_options))
    for url in urls[:limit_shards]:
        members_of = iter_members(url, stats, storage_options)
        while True:
            try:
                members = next(members_of)
            except StopIteration:
                break
            except (tarfile.TarError, EOFError, zlib.error) as exc:  # cut short: its last sample never surfaces
                log.warning("%s: unreadable from here on (%s); the rest of this shard is skipped", url, exc)
                stats.skipped["shard:truncated"] += 1
                break
            try:
                sample = Sample.from_members(members)
            except SchemaError as exc:
                stats.skipped[f"corrupt:{skip_reason(exc)}"] += 1
                continue
            stats.samples += 1
            yield sample


def skip_reason(exc: SchemaError) -> str:
    """The member a decode error is about (for skip counts), or ``sample`` when it names none."""
    text = str(exc)
    for m in MEMBERS:
        if f".{m}" in text or f"'{m}'" in text:
            return m
    return "sample"
