"""Listing clean source images and fetching their bytes.

A source's stable id is its URI. Listings are sorted, so the shard a source lands
in depends only on the config and the set of sources, never on listing order.
URI forms: a local path or ``file://`` path, ``s3://bucket/key``, ``samples://NAME``
(a bundled scikit-image photo) and ``shard://<shard url>#<key>.<member>`` (a clean
image inside an existing corpus). No other scheme is read, a ``samples://`` name
stays inside the bundled folder, and no source is read past :data:`MAX_SOURCE_BYTES`.
A COCO source (``coco:`` + ``images:``) lists the images its json names, inside its
image root; :func:`source_annotations` gives each one's annotations (read once per driver).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import fsspec

from omnilv.errors import OmniLVError
from pipelines.config import CorpusConfig, SourceSpec
from pipelines.configfile import ConfigError
from pipelines.storage import StorageError, contains, inside, is_remote

SAMPLES = "samples://"
SHARDS = "shards://"
SHARD_ITEM = "shard://"
#: The most bytes read of one source (checked before it is read whole): a 10^8-pixel JPEG, WebP or PNG photo fits.
MAX_SOURCE_BYTES = 256 * 2**20


class SourceError(OmniLVError):
    """A source URI that may not be read (another scheme, outside the bundled folder or the configured sources)."""


class SourceTooLarge(SourceError):
    """A source above :data:`MAX_SOURCE_BYTES`; the build counts it as a ``too_large`` reject."""


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
    if spec.coco is not None:
        return list(coco_set(spec, opts).image_uris(spec.images).values())
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


_COCO: dict[tuple, Any] = {}


def coco_set(spec: SourceSpec, opts: dict[str, Any]) -> Any:
    """The :class:`~pipelines.coco.CocoSet` of a COCO source, read once while its files stay the same (the last two
    are kept: a COCO json is large, and listing and annotating read the same one); errors are :class:`ConfigError`."""
    from pipelines.coco import CocoError, CocoSet

    key = (spec.coco, spec.refs, spec.refs_split, *(_version(p, opts) for p in (spec.coco, spec.refs) if p))
    if key not in _COCO:
        try:
            found = CocoSet.load(spec.coco, spec.refs, opts, spec.refs_split)
        except CocoError as exc:
            raise ConfigError(f"sources.coco: {exc}") from None
        while len(_COCO) >= 2:
            _COCO.pop(next(iter(_COCO)))
        _COCO[key] = found
    return _COCO[key]


def _version(path: str, opts: dict[str, Any]) -> str:
    """What changes when a file is rewritten (size and mtime, or the S3 ETag); "" when it cannot be read (the read
    itself then says why)."""
    try:
        fs = fsspec.filesystem("s3", **opts) if path.startswith("s3://") else fsspec.filesystem("file")
        info = fs.info(path)
    except (OSError, ValueError):
        return ""
    return f"{info.get('size')}:{info.get('mtime') or info.get('ETag') or info.get('LastModified')}"


def source_annotations(cfg: CorpusConfig, uris: list[str], storage_options: dict[str, Any] | None = None
                       ) -> dict[str, dict[str, Any]]:
    """URI -> the compact annotations record (:meth:`~pipelines.coco.CocoSet.record`) of every listed image of a
    COCO source; an image two COCO sources list gets both's instances (:func:`~pipelines.coco.merge_records`)."""
    from pipelines.coco import CocoError, merge_records

    listed, out = set(uris), {}
    for spec in cfg.sources:
        if spec.coco is None:
            continue
        coco = coco_set(spec, storage_options or {})
        for name, uri in coco.image_uris(spec.images).items():
            if uri not in listed:
                continue
            try:
                out[uri] = merge_records(out[uri], coco.record(name), uri) if uri in out else coco.record(name)
            except CocoError as exc:
                raise ConfigError(f"sources.coco: {exc}") from None
    return out


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


def fetch(uri: str, storage_options: dict[str, Any] | None = None, max_bytes: int | None = None) -> bytes:
    """The raw bytes of a source URI (``OSError`` when it cannot be read, :class:`SourceError` when it may not be,
    :class:`SourceTooLarge` past ``max_bytes`` (default :data:`MAX_SOURCE_BYTES`), found before more than
    ``max_bytes + 1`` bytes are read)."""
    max_bytes = MAX_SOURCE_BYTES if max_bytes is None else max_bytes
    if uri.startswith(SAMPLES):
        return _capped(open(sample_file(uri), "rb"), max_bytes, uri)
    if uri.startswith(SHARD_ITEM):
        url, _, name = uri[len(SHARD_ITEM):].rpartition("#")
        so = _scheme(url, storage_options)
        with fsspec.open(url, "rb", **so) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for info in tar:
                if info.name == name and info.isfile():
                    if info.size > max_bytes:
                        raise SourceTooLarge(f"{uri}: {info.size} bytes, more than {max_bytes}")
                    data = tar.extractfile(info)
                    return data.read() if data is not None else b""
        raise FileNotFoundError(f"{name} not in {url}")
    so = _scheme(uri, storage_options)
    if uri.startswith("s3://"):
        return _capped(fsspec.open(uri, "rb", **so).open(), max_bytes, uri)
    return _capped(open(uri.removeprefix("file://"), "rb"), max_bytes, uri)


def sample_file(uri: str) -> Path:
    """The bundled photo ``samples://NAME`` names: one plain file name, resolved inside the bundled folder."""
    from degradations import data_dir

    name = uri[len(SAMPLES):]
    root = data_dir().resolve()
    path = (root / name).resolve()
    if "/" in name or "\\" in name or name in ("", ".", "..") or path.parent != root:
        raise SourceError(f"{uri}: not a bundled photo name (it would leave {root})")
    return path


def _scheme(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options for ``url``: s3 ones for ``s3://``, none for a local path; any other scheme is refused."""
    if url.startswith("s3://"):
        return dict(storage_options or {})
    if is_remote(url):
        raise SourceError(f"{url}: only local paths and s3:// sources are read")
    return {}


def _capped(f: Any, max_bytes: int, uri: str) -> bytes:
    with f:
        size = getattr(f, "size", None)
        if isinstance(size, int) and size > max_bytes:  # s3: known from the listing, nothing downloaded
            raise SourceTooLarge(f"{uri}: {size} bytes, more than {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SourceTooLarge(f"{uri}: more than {max_bytes} bytes")
    return data


# -- where sources are, and which a recorded sample may name ------------------------------------------
def source_roots(cfg: CorpusConfig) -> list[str]:
    """The folders, prefixes and list files ``cfg`` reads sources from (an output must overlap none)."""
    out = []
    for spec in cfg.sources:
        uri = spec.uri
        if spec.coco is not None:
            out += [_static_root(spec.images), spec.coco, *([spec.refs] if spec.refs else [])]
        elif uri.startswith(SAMPLES):
            from degradations import data_dir

            out.append(str(data_dir()))
        elif uri.startswith(SHARDS):
            out.append(uri[len(SHARDS):])
        else:
            out.append(_static_root(uri))
    return out


def source_objects(uris: list[str]) -> list[str]:
    """The files or objects behind listed source URIs (a corpus sample's shard), bundled photos left out."""
    return [u[len(SHARD_ITEM):].rpartition("#")[0] if u.startswith(SHARD_ITEM) else u
            for u in uris if not u.startswith(SAMPLES)]


def _static_root(uri: str) -> str:
    """A folder, prefix or file URI without its glob part (``/data/**/*.png`` -> ``/data``)."""
    if is_remote(uri):
        return uri
    parts = uri.removeprefix("file://").split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return "/".join(parts[:i]) or "/"
    return "/".join(parts)


def check_recorded(uri: str, specs: list[SourceSpec], storage_options: dict[str, Any] | None = None) -> None:
    """Raise :class:`SourceError` unless a build from ``specs`` could have read ``uri``: a bundled photo, a file
    under a configured folder, glob or prefix, a line of a configured list file, or a sample of a configured
    corpus. A sample's json names its source; that name is data, and is read only when it checks out here."""
    if uri.startswith(SAMPLES):
        sample_file(uri)
        return
    for spec in specs:
        if _under(uri, spec, storage_options or {}):
            return
    raise SourceError(f"{uri}: not under any source of this corpus' config ({[s.uri for s in specs]}); "
                      "refusing to read it")


def _under(uri: str, spec: SourceSpec, opts: dict[str, Any]) -> bool:
    if spec.coco is not None:
        return _below(uri, spec.images)
    root = spec.uri
    if root.startswith(SAMPLES):
        return False
    if root.startswith(SHARDS):
        if not uri.startswith(SHARD_ITEM):
            return False
        from pipelines.read import load_manifest, shard_urls

        corpus = root[len(SHARDS):]
        url, _, name = uri[len(SHARD_ITEM):].rpartition("#")
        so = opts if corpus.startswith("s3://") else {}
        return name.endswith("." + spec.member) and url in shard_urls(corpus, load_manifest(corpus, so))
    if root.endswith((".jsonl", ".parquet")):
        return uri in set(_list_file(root, spec.column, opts))
    if not uri.lower().endswith(tuple(e.lower() for e in spec.extensions)):
        return False
    return _below(uri, root)


def _below(uri: str, root: str) -> bool:
    """Whether ``uri`` lies under the folder, glob or ``s3://`` prefix ``root``."""
    if root.startswith("s3://"):
        prefix = root.rstrip("/") + "/"
        try:
            return uri.startswith(prefix) and bool(inside(uri[len(prefix):]))
        except StorageError:
            return False
    return not is_remote(uri) and contains(_static_root(root), uri)
