"""``omnilv corpus build``: sources → one Ray task per shard → committed shards → manifest → report.

Commit protocol (DESIGN.md): a shard task writes its tar atomically, then a small
commit record ``_commits/<shard>.json``; the driver writes ``manifest.json`` last,
from the commit records, in shard order. A rerun skips shards whose commit record
and bytes check out, so a resumed build equals an uninterrupted one byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import CorpusConfig
from pipelines.configfile import ConfigError
from pipelines.runtime import ensure_ray
from pipelines.schema import MANIFEST, MEMBERS, Manifest, ShardRecord, shard_name
from pipelines.storage import BUILD_STATE, COMMITS, Store, s3_options

log = logging.getLogger(__name__)
REPORT = "report.json"


class BuildError(RuntimeError):
    """The build cannot go on (changed config, unreadable output); the message says what to do."""


@dataclass(frozen=True)
class ShardJob:
    """One output shard: its slice of the sorted source list, and exemplar candidates."""

    index: int
    sources: tuple[str, ...]
    pool: tuple[str, ...]

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
def plan(uris: list[str], cfg: CorpusConfig) -> list[ShardJob]:
    """Fixed slices of the sorted sources: the layout depends only on the config and the listing."""
    per = max(1, -(-cfg.output.samples_per_shard // cfg.variants_per_source))
    slices = [tuple(uris[i:i + per]) for i in range(0, len(uris), per)]
    # Exemplars come from the shard's own slice and the next one, so a shard task reads a bounded set.
    return [ShardJob(i, s, s + slices[(i + 1) % len(slices)]) for i, s in enumerate(slices)]


def listing_digest(uris: list[str]) -> str:
    return hashlib.sha256("\n".join(uris).encode("utf-8")).hexdigest()


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
              mixture: list[tuple[str, float]]) -> dict[str, Any]:
    """Build, write and commit one shard; returns its commit record plus timings."""
    from pipelines.synth import generate_shard

    _one_thread()
    cfg = CorpusConfig.model_validate(cfg_data)
    t0 = time.perf_counter()
    members, record = generate_shard(cfg, job, opts, mixture)
    data = tar_bytes(members)
    store = Store(cfg.output.path, opts)
    record.update(name=job.name, samples=len(members), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    store.write(job.name, data)
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


def check_state(store: Store, cfg: CorpusConfig, listing: str, mixture: list, overwrite: bool) -> None:
    """Refuse to mix two configs (or source listings, or plugin sets) in one output unless ``overwrite``."""
    state = {"config_sha256": cfg.digest(), "sources_sha256": listing, "mixture": [list(m) for m in mixture],
             "plugin_versions": plugin_versions()}
    old = None
    if store.exists(BUILD_STATE):
        old = json.loads(store.read(BUILD_STATE))
    elif store.exists(MANIFEST):
        old = {**state, "config_sha256": Manifest.from_json(store.read(MANIFEST).decode()).config_sha256}
    if old is not None and any(old.get(k) != v for k, v in state.items()):
        what = next(w for k, w in (("config_sha256", "config"), ("sources_sha256", "source listing"),
                                   ("mixture", "set of installed plugins"),
                                   ("plugin_versions", "plugin kernel versions")) if old.get(k) != state[k])
        if not overwrite:
            raise BuildError(
                f"{store.root} holds a corpus built from a different {what} "
                f"(digest {str(old.get('config_sha256'))[:12]}… vs {state['config_sha256'][:12]}…). "
                "Use the original config to resume it, pick another output.path, or pass --overwrite "
                "to delete it and rebuild.")
        wipe(store)
    elif overwrite:
        wipe(store)
    store.write(BUILD_STATE, json.dumps({**state, "config": cfg.resolved()}, sort_keys=True, indent=1).encode())


def wipe(store: Store) -> None:
    """Delete a corpus' shards, commit records, manifest and reports (manifest first: readers stop at once)."""
    names = store.list()
    first = [n for n in names if n == MANIFEST]
    store.remove(first + [n for n in names if n not in first and _ours(n)])


def _ours(name: str) -> bool:
    return (name.startswith(("shard-", f"{COMMITS}/", "report", "contact_")) or name in (BUILD_STATE, MANIFEST))


def committed(store: Store, jobs: list[ShardJob], verify: str) -> dict[int, dict[str, Any]]:
    """Commit records of shards already done whose shard file checks out (size, optionally sha256)."""
    have = set(store.list(COMMITS))
    done: dict[int, dict[str, Any]] = {}
    for job in jobs:
        if f"{COMMITS}/{job.name}.json" not in have:
            continue
        try:
            rec = json.loads(store.read(f"{COMMITS}/{job.name}.json"))
            ok = store.size(job.name) == rec["bytes"] and (verify != "sha256" or store.sha256(job.name) ==
                                                           rec["sha256"])
        except (OSError, ValueError, KeyError):
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
    for r in records:
        rejects.update(r.get("rejects", {}))
        tasks.update(r.get("tasks", {}))
    extra = {"config": cfg.resolved(), "name": cfg.name, "samples": sum(s.samples for s in shards),
             "sources": {"count": n_sources, "sha256": listing}, "rejects": dict(sorted(rejects.items())),
             "tasks": dict(sorted(tasks.items())), "mixture": [list(m) for m in mixture],
             "empty_shards": sum(1 for r in records if r["samples"] == 0)}
    manifest = Manifest(shards, cfg.digest(), extra=extra)
    store.write(MANIFEST, manifest.to_json().encode("utf-8"))
    return manifest


# -- the driver ------------------------------------------------------------------------------------
def build_corpus(cfg: CorpusConfig, *, overwrite: bool = False, progress: bool = True, address: str | None = None,
                 workers: int | None = None) -> BuildResult:
    """Build (or resume) the corpus ``cfg`` describes; returns the manifest and where the report is."""
    from pipelines.report import write_report
    from pipelines.sources import list_sources
    from pipelines.synth import resolve_mixture

    t0 = time.perf_counter()
    try:
        mixture = resolve_mixture(cfg)  # unknown or broken task names fail here, before any Ray or I/O work
    except Exception as exc:  # noqa: BLE001 - any plugin import error becomes a message naming the field
        raise ConfigError(f"mixture.tasks: {type(exc).__name__}: {exc}") from None
    opts = s3_options(cfg.s3)
    uris = list_sources(cfg, opts)  # before touching the output: a bad source spec leaves nothing behind
    store = Store(cfg.output.path, opts)
    store.ensure_bucket()
    listing = listing_digest(uris)
    check_state(store, cfg, listing, mixture, overwrite)
    store.clean_temps()
    jobs = plan(uris, cfg)
    done = committed(store, jobs, cfg.runtime.resume_verify)
    todo = [j for j in jobs if j.index not in done]
    if todo and store.exists(MANIFEST):
        store.remove([MANIFEST])  # it would list shards being rebuilt; the finished build writes it again
    fresh = run_jobs(cfg, todo, opts, mixture, done_samples=sum(r["samples"] for r in done.values()),
                     total=len(uris) * cfg.variants_per_source, progress=progress, address=address,
                     workers=workers or cfg.runtime.workers)
    records = [done.get(j.index) or fresh[j.index] for j in jobs]
    manifest = write_manifest(store, cfg, records, listing, len(uris), mixture)
    seconds = time.perf_counter() - t0
    stats = {"seconds": seconds, "built_shards": len(todo), "resumed_shards": len(done),
             "built_samples": sum(fresh[j.index]["samples"] for j in todo),
             "task_seconds": sum(fresh[j.index]["seconds"] for j in todo)}
    report_path = write_report(store, cfg, manifest, records, stats)
    return BuildResult(manifest, store.root, report_path, len(todo), len(done), seconds, stats)


def run_jobs(cfg: CorpusConfig, jobs: list[ShardJob], opts: dict[str, Any], mixture: list[tuple[str, float]], *,
             done_samples: int, total: int,
             progress: bool, address: str | None, workers: int | None) -> dict[int, dict[str, Any]]:
    """Run shard tasks on Ray with a bounded number in flight; returns commit records by shard index."""
    if not jobs:
        return {}
    import ray

    started = ensure_ray(address, num_cpus=workers, log_to_driver=False)
    try:
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1, max_retries=cfg.runtime.retries, retry_exceptions=True)(run_shard)
        cfg_ref = ray.put(cfg.model_dump(mode="json"))
        out: dict[int, dict[str, Any]] = {}
        with _progress(progress, total, done_samples, cfg.variants_per_source) as bar:
            pending: dict[Any, int] = {}
            queue = list(jobs)
            while queue or pending:
                while queue and len(pending) < limit:
                    job = queue.pop(0)
                    pending[task.remote(cfg_ref, job, opts, mixture)] = job.index
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    idx = pending.pop(ref)
                    try:
                        out[idx] = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise BuildError(f"{shard_name(idx)} failed after {cfg.runtime.retries} retries: "
                                         f"{exc}\nRerun the same command to resume.") from None
                    bar(out[idx]["samples"], sum(out[idx]["rejects"].values()))
        return out
    finally:
        if started:
            ray.shutdown()


@contextmanager
def _progress(enabled: bool, total: int, done: int, per_reject: int = 1) -> Iterator[Callable[[int, int], None]]:
    """A rich bar over samples with samples/s and ETA; yields ``advance(samples, rejects)``."""
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
            TextColumn("{task.fields[rate]:.1f} samples/s"), TextColumn("rejects {task.fields[rejects]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    t0, counts = time.perf_counter(), {"n": 0, "r": 0}
    with Progress(*cols, transient=False) as bar:
        tid = bar.add_task("build", total=total, completed=done, rate=0.0, rejects=0)

        def advance(n: int, r: int) -> None:
            counts["n"] += n
            counts["r"] += r
            rate = counts["n"] / max(time.perf_counter() - t0, 1e-6)
            # rejected sources never become samples: shrink the total so the ETA stays honest
            bar.update(tid, advance=n, rate=rate, rejects=counts["r"],
                       total=total - counts["r"] * per_reject)

        yield advance
