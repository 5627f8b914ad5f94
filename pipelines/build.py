"""``omnilv corpus build``: sources → one Ray task per shard → committed shards → manifest → report.

Commit protocol (DESIGN.md): a shard task writes its tar atomically, then a small
commit record ``_commits/<shard>.json``; the driver writes ``manifest.json`` last,
from the commit records, in shard order. A rerun skips shards whose commit record
and bytes check out, so a resumed build equals an uninterrupted one byte for byte.

Ownership (DESIGN.md, trust and safety): a build writes only into an empty folder or
one of its own corpora, never into the filesystem root, the home folder, a bucket root
or a folder overlapping a source. ``_build.json`` names every file the build writes;
``--overwrite`` and the clean-up of a killed writer's temps delete only those names.
One build at a time holds the output's lease (:mod:`pipelines.lease`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from omnilv.errors import OmniLVError
from pipelines.config import CorpusConfig
from pipelines.configfile import ConfigError
from pipelines.lease import LEASE, Lease
from pipelines.runtime import ensure_ray
from pipelines.schema import MANIFEST, MEMBERS, SCHEMA_VERSION, Manifest, SchemaError, ShardRecord, shard_name
from pipelines.storage import BUILD_STATE, COMMITS, TEMP_RE, Store, s3_options

log = logging.getLogger(__name__)
REPORTS = ("report.json", "report.html")  # pipelines.report writes these, and contact_<domain>.png
#: The names a build writes, for a state that does not list them (``_build.json`` before it did, a corpus
#: known only by its manifest): exactly our naming scheme, so ``report-q3.pdf`` or ``notes.tmp-x.txt`` never match.
OUR_NAMES = re.compile(r"shard-\d{6}\.tar|_commits/shard-\d{6}\.tar\.json|manifest\.json|report\.(json|html)"
                       r"|contact_[A-Za-z0-9_-]+\.png|_build\.json|_lease\.json")


class BuildError(OmniLVError, RuntimeError):
    """The build cannot go on (changed config, unreadable output); the message says what to do."""


class BuildStateError(BuildError):
    """The output holds something a build may neither resume nor delete: files that are not one of our corpora,
    or a build state it cannot read."""


@dataclass(frozen=True)
class ShardJob:
    """One output shard: its slice of the sorted source list, exemplar candidates, and the annotations of its
    sources that have some (COCO sources: the driver reads the json once, each task gets its images' records)."""

    index: int
    sources: tuple[str, ...]
    pool: tuple[str, ...]
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass
class BuildResult:
    manifest: Manifest
    root: str
    report_path: str
    built: int = 0  # shards written by this run
    skipped: int = 0  # shards already committed (resume)
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


# -- planning --------------------------------------------------------------------------------------
def plan(uris: list[str], cfg: CorpusConfig, annotations: dict[str, dict[str, Any]] | None = None) -> list[ShardJob]:
    """Fixed slices of the sorted sources: the layout depends only on the config and the listing."""
    per = max(1, -(-cfg.output.samples_per_shard // cfg.variants_per_source))
    slices = [tuple(uris[i:i + per]) for i in range(0, len(uris), per)]
    notes = annotations or {}
    # Exemplars come from the shard's own slice and the next one, so a shard task reads a bounded set.
    return [ShardJob(i, s, s + slices[(i + 1) % len(slices)], {u: notes[u] for u in s if u in notes})
            for i, s in enumerate(slices)]


def listing_digest(uris: list[str], annotations: dict[str, dict[str, Any]] | None = None) -> str:
    """What a resume compares of the sources: their URIs, and the annotations of those that have some (an edited
    COCO json makes other samples)."""
    h = hashlib.sha256("\n".join(uris).encode("utf-8"))
    if annotations:
        h.update(json.dumps(annotations, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


# -- writing one shard (runs in a Ray worker) ------------------------------------------------------
def tar_bytes(samples: list[dict[str, bytes]], members: tuple[str, ...] = MEMBERS) -> bytes:
    """A tar of WebDataset sample dicts with fixed member order and metadata (reproducible bytes).

    Only ``members`` are written, in that order (the corpus schema's by default; the latent cache passes its own).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for member in members:
                if member not in sample:
                    continue
                data = sample[member]
                info = tarfile.TarInfo(f"{sample['__key__']}.{member}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = "omnilv"
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run_shard(cfg_data: dict[str, Any], job: ShardJob, opts: dict[str, Any],
              mixture: list[tuple[str, float]], kill_once: tuple[int, str] | None = None) -> dict[str, Any]:
    """Build, write and commit one shard; returns its commit record plus timings. ``kill_once`` is a test hook
    (shard index, marker file): that shard's first attempt exits hard after its tar, before its commit record."""
    from pipelines.synth import generate_shard

    _one_thread()
    cfg = CorpusConfig.model_validate(cfg_data)
    t0 = time.perf_counter()
    members, record = generate_shard(cfg, job, opts, mixture)
    data = tar_bytes(members)
    store = Store(cfg.output.path, opts)
    record.update(name=job.name, samples=len(members), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    store.write(job.name, data)
    if kill_once and kill_once[0] == job.index and not os.path.exists(kill_once[1]):
        with open(kill_once[1], "x") as marker:  # the retry finds it and lives
            marker.write(str(os.getpid()))
        os._exit(17)
    store.write(f"{COMMITS}/{job.name}.json", json.dumps(record, sort_keys=True, indent=1).encode())
    return {**record, "seconds": time.perf_counter() - t0}


def _one_thread() -> None:
    """One OpenCV/BLAS thread per worker: parallelism comes from tasks, and results stay reproducible."""
    import cv2

    cv2.setNumThreads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


# -- resume / state --------------------------------------------------------------------------------
def plugin_versions() -> dict[str, int]:
    """Kernel versions of the registered plugins above 1: shards made by two versions must not mix."""
    from degradations import registry

    out = {}
    for name in registry.names():
        try:
            version = registry.get(name).version
        except Exception:  # noqa: BLE001 - a broken plugin is reported where the mixture loads it
            continue
        if version != 1:
            out[name] = version
    return out


def planned_writes(jobs: list[ShardJob], mixture: list[tuple[str, float]]) -> dict[str, Any]:
    """What this build may write, for ``_build.json``: its shards (and their commit records) by count, and the
    other names (the manifest, the report, one contact sheet per domain of the mixture)."""
    from pipelines.synth import get_task

    sheets = {f"contact_{get_task(name).domain}.png" for name, _ in mixture}
    return {"shards": len(jobs), "files": sorted({MANIFEST, *REPORTS, *sheets})}


def owned(state: dict[str, Any] | None) -> Callable[[str], bool]:
    """Whether a name is one the build ``state`` describes wrote (its ``writes``, else :data:`OUR_NAMES`)."""
    writes = (state or {}).get("writes")
    if not isinstance(writes, dict):
        return lambda name: bool(OUR_NAMES.fullmatch(name))
    shards = {shard_name(i) for i in range(int(writes.get("shards", 0)))}
    names = shards | {f"{COMMITS}/{s}.json" for s in shards} | {BUILD_STATE, LEASE}
    names |= {n for n in map(str, writes.get("files", [])) if OUR_NAMES.fullmatch(n)}  # an edited state widens nothing
    return names.__contains__


def read_state(store: Store) -> dict[str, Any] | None:
    """The state of the corpus at ``store``: ``_build.json``; for a corpus known only by its manifest, its config
    digest; None for a folder holding neither (it must then be empty, see :func:`check_owner`)."""
    if store.exists(BUILD_STATE):
        try:
            state = json.loads(store.read(BUILD_STATE))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BuildStateError(
                f"{store.path(BUILD_STATE)} is not a valid build state ({exc}), so it is unknown which files there "
                "a build wrote; nothing was changed. Restore that file, or build into an empty output.path.") from None
        return state
    if store.exists(MANIFEST):
        try:
            manifest = Manifest.from_json(store.read(MANIFEST).decode("utf-8"), store.path(MANIFEST))
        except (SchemaError, UnicodeDecodeError):
            return None
        if isinstance(manifest.extra.get("config"), dict) and "kind" not in manifest.extra:  # not a latent cache
            return {"config_sha256": manifest.config_sha256}
    return None


def check_owner(store: Store) -> dict[str, Any] | None:
    """:func:`read_state`, refusing a folder that holds files but no corpus of ours (with or without overwrite)."""
    state = read_state(store)
    if state is None:
        foreign = [n for n in store.list() if n != LEASE]
        if foreign:
            raise BuildStateError(
                f"{store.root} is not empty ({len(foreign)} file(s), e.g. {foreign[0]!r}) and holds no omnilv corpus; "
                "a build writes only into an empty folder or one of its own corpora. Choose another output.path.")
    return state


def check_state(store: Store, cfg: CorpusConfig, listing: str, mixture: list, overwrite: bool,
                writes: dict[str, Any]) -> dict[str, Any]:
    """Refuse to mix two configs (or source listings, or plugin sets) in one output unless ``overwrite``; record
    the state, with what this build writes. Call it holding the output's lease."""
    state = {"config_sha256": cfg.digest(), "sources_sha256": listing, "mixture": [list(m) for m in mixture],
             "plugin_versions": plugin_versions(), "corpus_version": SCHEMA_VERSION}
    old = check_owner(store)
    if old is not None and "sources_sha256" not in old:  # known by its manifest only: its config digest decides
        old = {**state, "config_sha256": old["config_sha256"]}
    if old is not None and any(old.get(k) != v for k, v in state.items()):
        what = next(w for k, w in (("config_sha256", "config"), ("sources_sha256", "source listing"),
                                   ("mixture", "set of installed plugins"),
                                   ("plugin_versions", "plugin kernel versions"),
                                   ("corpus_version", "corpus format version (an older omnilv)"))
                    if old.get(k) != state[k])
        if not overwrite:
            raise BuildError(
                f"{store.root} holds a corpus built from a different {what} "
                f"(digest {str(old.get('config_sha256'))[:12]}… vs {state['config_sha256'][:12]}…). "
                "Use the original config to resume it, pick another output.path, or pass --overwrite "
                "to delete it and rebuild.")
        wipe(store, old)
    elif overwrite:
        wipe(store, old)
    new = {**state, "config": cfg.resolved(), "writes": writes}
    store.write(BUILD_STATE, json.dumps(new, sort_keys=True, indent=1).encode())
    return new


def wipe(store: Store, state: dict[str, Any] | None) -> None:
    """Delete the files the build ``state`` names, and their temps (manifest first: readers stop at once).

    The lease and the build state stay: the caller holds one and rewrites the other."""
    if state is None:
        return
    mine = owned(state)
    names = [n for n in store.list() if n not in (LEASE, BUILD_STATE)
             and (mine(n) or bool((m := TEMP_RE.match(n)) and mine(m.group(1))))]
    store.remove(sorted(names, key=lambda n: n != MANIFEST))


def committed(store: Store, jobs: list[ShardJob], verify: str) -> dict[int, dict[str, Any]]:
    """Commit records of shards already done whose shard file checks out (size, optionally sha256)."""
    have = set(store.list(COMMITS))
    done: dict[int, dict[str, Any]] = {}
    for job in jobs:
        if f"{COMMITS}/{job.name}.json" not in have:
            continue
        try:
            rec = json.loads(store.read(f"{COMMITS}/{job.name}.json"))
            ok = rec["name"] == job.name and store.size(job.name) == rec["bytes"] and (
                verify != "sha256" or store.sha256(job.name) == rec["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            done[job.index] = rec
        else:
            log.warning("%s: commit record does not match the shard; rebuilding it", job.name)
    return done


def write_manifest(store: Store, cfg: CorpusConfig, records: list[dict[str, Any]], listing: str,
                   n_sources: int, mixture: list[tuple[str, float]]) -> Manifest:
    """``manifest.json`` from the commit records, in shard order; deterministic (no times, no hosts)."""
    shards = [ShardRecord.from_json(r) for r in sorted(records, key=lambda r: r["name"]) if r["samples"] > 0]
    rejects: Counter = Counter()
    tasks: Counter = Counter()
    no_exemplar: Counter = Counter()
    for r in records:
        rejects.update(r.get("rejects", {}))
        tasks.update(r.get("tasks", {}))
        no_exemplar.update(r.get("no_exemplar", {}))
    extra = {"config": cfg.resolved(), "name": cfg.name, "samples": sum(s.samples for s in shards),
             "sources": {"count": n_sources, "sha256": listing}, "rejects": dict(sorted(rejects.items())),
             "no_exemplar": dict(sorted(no_exemplar.items())),
             "tasks": dict(sorted(tasks.items())), "mixture": [list(m) for m in mixture],
             "empty_shards": sum(1 for r in records if r["samples"] == 0)}
    manifest = Manifest(shards, cfg.digest(), extra=extra)
    store.write(MANIFEST, manifest.to_json().encode("utf-8"))
    return manifest


# -- the driver ------------------------------------------------------------------------------------
def build_corpus(cfg: CorpusConfig, *, overwrite: bool = False, progress: bool = True, address: str | None = None,
                 workers: int | None = None, kill_once: tuple[int, str] | None = None) -> BuildResult:
    """Build (or resume) the corpus ``cfg`` describes; returns the manifest and where the report is.

    ``kill_once`` is a test hook, never a config field: see :func:`run_shard`."""
    from pipelines.report import write_report
    from pipelines.sources import list_sources, source_annotations, source_objects, source_roots
    from pipelines.synth import resolve_mixture

    t0 = time.perf_counter()
    try:
        mixture = resolve_mixture(cfg)  # unknown or broken task names fail here, before any Ray or I/O work
    except Exception as exc:  # noqa: BLE001 - any plugin import error becomes a message naming the field
        raise ConfigError(f"mixture.tasks: {type(exc).__name__}: {exc}") from None
    opts = s3_options(cfg.s3)
    uris = list_sources(cfg, opts)  # before touching the output: a bad source spec leaves nothing behind
    store = Store(cfg.output.path, opts)
    store.refuse_unsafe(source_roots(cfg), source_objects(uris))
    store.ensure_bucket()
    check_owner(store)  # before the lease is written: a folder that is not ours gets nothing of ours
    notes = source_annotations(cfg, uris, opts)
    listing = listing_digest(uris, notes)
    jobs = plan(uris, cfg, notes)
    with Lease(store) as lease:
        state = check_state(store, cfg, listing, mixture, overwrite, planned_writes(jobs, mixture))
        store.clean_temps(owned(state))
        done = committed(store, jobs, cfg.runtime.resume_verify)
        todo = [j for j in jobs if j.index not in done]
        if todo and store.exists(MANIFEST):
            store.remove([MANIFEST])  # it would list shards being rebuilt; the finished build writes it again
        fresh = run_jobs(cfg, todo, opts, mixture, done_samples=sum(r["samples"] for r in done.values()),
                         total=len(uris) * cfg.variants_per_source, progress=progress, address=address,
                         workers=workers or cfg.runtime.workers, kill_once=kill_once)
        records = [done.get(j.index) or fresh[j.index] for j in jobs]
        lease.check()  # a build that lost its output to another one publishes nothing
        manifest = write_manifest(store, cfg, records, listing, len(uris), mixture)
        seconds = time.perf_counter() - t0
        stats = {"seconds": seconds, "built_shards": len(todo), "resumed_shards": len(done),
                 "built_samples": sum(fresh[j.index]["samples"] for j in todo),
                 "task_seconds": sum(fresh[j.index]["seconds"] for j in todo)}
        report_path = write_report(store, cfg, manifest, records, stats)
    return BuildResult(manifest, store.root, report_path, len(todo), len(done), seconds, stats)


def run_jobs(cfg: CorpusConfig, jobs: list[ShardJob], opts: dict[str, Any], mixture: list[tuple[str, float]], *,
             done_samples: int, total: int,
             progress: bool, address: str | None, workers: int | None,
             kill_once: tuple[int, str] | None = None) -> dict[int, dict[str, Any]]:
    """Run shard tasks on Ray with a bounded number in flight; returns commit records by shard index."""
    if not jobs:
        return {}
    import ray

    from pipelines.synth import task_memory

    started = ensure_ray(address, num_cpus=workers, log_to_driver=False)
    try:
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        memory = fit_memory(task_memory(cfg.geometry), cfg.geometry.max_pixels)
        task = ray.remote(num_cpus=1, memory=memory, max_retries=cfg.runtime.retries,
                          retry_exceptions=True)(run_shard)
        cfg_ref = ray.put(cfg.model_dump(mode="json"))
        out: dict[int, dict[str, Any]] = {}
        with _progress(progress, total, done_samples) as bar:
            pending: dict[Any, int] = {}
            queue = list(jobs)
            while queue or pending:
                while queue and len(pending) < limit:
                    job = queue.pop(0)
                    pending[task.remote(cfg_ref, job, opts, mixture, kill_once)] = job.index
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    idx = pending.pop(ref)
                    try:
                        out[idx] = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise BuildError(f"{shard_name(idx)} failed after {cfg.runtime.retries} retries: "
                                         f"{exc}\nRerun the same command to resume.") from None
                    bar(out[idx]["samples"], lost_samples(out[idx]["rejects"], cfg.variants_per_source))
        return out
    finally:
        if started:
            ray.shutdown()


def lost_samples(rejects: dict[str, int], variants: int) -> int:
    """Samples a shard's rejects cost: every variant of a skipped source, one per skipped sample."""
    from pipelines.synth import SAMPLE_REASONS

    return sum(n if reason in SAMPLE_REASONS else n * variants for reason, n in rejects.items())


def fit_memory(memory: int, max_pixels: int) -> int:
    """The memory a shard task declares to Ray: what it may need, or, where no node offers that much, all of the
    largest node's (one task at a time there, rather than tasks Ray could never place)."""
    import ray

    largest = int(max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0))
    if largest >= memory or largest <= 0:
        return memory
    log.warning("a shard task may need %.1f GiB at geometry.max_pixels=%d, but the largest Ray node offers %.1f GiB "
                "of task memory: running one task per node; lower geometry.max_pixels for more", memory / 2**30,
                max_pixels, largest / 2**30)
    return largest


@contextmanager
def _progress(enabled: bool, total: int, done: int) -> Iterator[Callable[[int, int], None]]:
    """A rich bar over samples with samples/s and ETA; yields ``advance(samples, lost samples)``."""
    if not enabled:
        yield lambda n, r: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = (TextColumn("[bold]corpus"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]:.1f} samples/s"), TextColumn("skipped {task.fields[rejects]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    t0, counts = time.perf_counter(), {"n": 0, "r": 0}
    with Progress(*cols, transient=False) as bar:
        tid = bar.add_task("build", total=total, completed=done, rate=0.0, rejects=0)

        def advance(n: int, r: int) -> None:
            counts["n"] += n
            counts["r"] += r
            rate = counts["n"] / max(time.perf_counter() - t0, 1e-6)
            # skipped sources and samples never become samples: shrink the total so the ETA stays honest
            bar.update(tid, advance=n, rate=rate, rejects=counts["r"], total=total - counts["r"])

        yield advance
