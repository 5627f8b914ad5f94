"""Trust and safety of the corpus build: it deletes only what its own state names, writes only into an empty folder
or one of its corpora (never /, $HOME or a source), one build per output, and names from a manifest or a sample's
json stay inside what the corpus may read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus_helpers import SMALL, corpus_files, small_config

from degradations.samples import sample_paths
from pipelines.build import BuildStateError, build_corpus, tar_bytes
from pipelines.inspect import inspect_corpus
from pipelines.lease import LEASE, Lease, LeaseError
from pipelines.read import iter_members, iter_samples, load_manifest
from pipelines.regenerate import regenerate
from pipelines.schema import MANIFEST, SchemaError
from pipelines.sources import SourceError
from pipelines.storage import StorageError, Store

ONE_SHARD = ("output.samples_per_shard=19", "variants_per_source=1")


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**e, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


def cli_build(out: Path, *extra: str) -> list[str]:
    sets = [a for s in (*SMALL, f"output.path={out}") for a in ("--set", s)]
    return [sys.executable, "-m", "omnilv", "corpus", "build", *sets, "--workers", "1", "--quiet", *extra]


# -- delete only what the build state names -------------------------------------------------------------------
def test_overwrite_and_cleanup_remove_only_names_our_state_lists(tmp_path, ray_local):
    out = tmp_path / "c"
    build_corpus(small_config(out, *ONE_SHARD), progress=False)
    state = json.loads((out / "_build.json").read_text())
    assert state["writes"]["shards"] == 1 and "report.json" in state["writes"]["files"]
    user = {"notes.tmp-x.txt": b"mine", "report-q3.pdf": b"%PDF", "shard-final.tar": b"kept", "photos/cat.png": b"c",
            "_commits/readme.txt": b"r", "manifest.json.bak": b"b"}
    for name, data in user.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    ours = ["shard-000000.tar.tmp-0123abcd", "manifest.json.tmp-89abcdef"]  # what a killed writer of ours leaves
    for name in ours:
        (out / name).write_bytes(b"partial")

    rerun = build_corpus(small_config(out, *ONE_SHARD), progress=False)  # resume: cleans our temps only
    assert rerun.skipped == 1 and not any((out / n).exists() for n in ours)
    assert all((out / n).read_bytes() == d for n, d in user.items())

    changed = build_corpus(small_config(out, *ONE_SHARD, "output.seed=5"), progress=False, overwrite=True)
    assert changed.built == 1 and changed.manifest.config_sha256 == small_config(out, *ONE_SHARD,
                                                                                 "output.seed=5").digest()
    assert all((out / n).read_bytes() == d for n, d in user.items()), "a user's file was deleted"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_corpus_is_refused_even_with_overwrite(tmp_path, overwrite):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"years of work")
    (out / "report.json").write_text("{}")  # a name we also use proves nothing
    before = files(out)
    with pytest.raises(BuildStateError, match="holds no omnilv corpus"):
        build_corpus(small_config(out, *ONE_SHARD), progress=False, overwrite=overwrite)
    assert files(out) == before  # not even a lease file was left behind


def test_unsafe_outputs_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sample_paths()[:2]:
        shutil.copy(p, src / p.name)
    from_src = f"sources=[{{uri: '{src}'}}]"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    cases = {"/": (), str(home): (), str(tmp_path): (from_src,), str(src / "out"): (from_src,)}
    for out, extra in cases.items():
        before = files(tmp_path)
        with pytest.raises(StorageError, match="filesystem root|home folder|overlap"):
            build_corpus(small_config(out, *ONE_SHARD, *extra), progress=False, overwrite=True)
        assert files(tmp_path) == before, out
    listing = tmp_path / "list.jsonl"  # a list file naming a photo that lies in the output
    (tmp_path / "out").mkdir()
    shutil.copy(sample_paths()[0], tmp_path / "out" / "a.png")
    listing.write_text(json.dumps({"uri": str(tmp_path / "out" / "a.png")}) + "\n")
    with pytest.raises(StorageError, match="holds the source"):
        build_corpus(small_config(tmp_path / "out", f"sources=[{{uri: '{listing}'}}]"), progress=False)


def test_a_corrupt_build_state_is_one_line_and_changes_nothing(reference, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(reference.root, copy)
    (copy / "_build.json").write_text('{"config_sha256": "trunc')
    before = files(copy)
    for extra in ((), ("--overwrite",)):
        res = subprocess.run(cli_build(copy, *extra), env=env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "_build.json is not a valid build state" in lines[0], lines
        assert files(copy) == before


# -- one build per output ---------------------------------------------------------------------------------------
def test_a_second_build_on_the_same_output_is_refused(reference, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen(cli_build(out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "_commits").glob("*.json")) and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, f"the first build ended before the second started: {first.stderr.read()[-2000:]}"
    with pytest.raises(LeaseError, match=rf"another build \(pid {first.pid} on "):
        build_corpus(small_config(out), progress=False)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert corpus_files(out) == corpus_files(reference.root)  # the first build's output is untouched
    assert not (out / LEASE).exists()  # released when it finished


def _lease_record(**kw) -> bytes:
    rec = {"holder": "omnilv corpus build", "host": "other-host", "pid": 1, "pidns": 0, "token": "t",
           "started": "2026-01-01T00:00:00+00:00", "expires": time.time() + 3600, **kw}
    return json.dumps(rec).encode()


def test_lease_takeover_rules_local(tmp_path):
    store = Store(str(tmp_path / "c"))
    path = Path(store.path(LEASE))
    path.parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from pipelines.lease import _pid_namespace

    me = {"host": os.uname().nodename, "pidns": _pid_namespace()}
    path.write_bytes(_lease_record())  # a live build elsewhere: refused, named
    with pytest.raises(LeaseError, match="pid 1 on other-host"):
        Lease(store).acquire()
    for takeover in (_lease_record(**me, pid=int(gone.stdout)),  # a dead process of this host (SIGKILLed build)
                     _lease_record(expires=0),  # an expired lease of another host
                     b"{not json"):
        path.write_bytes(takeover)
        lease = Lease(store).acquire()
        assert json.loads(path.read_text())["pid"] == os.getpid()
        lease.release()
        assert not path.exists()

    a = Lease(store).acquire()
    with pytest.raises(LeaseError, match=f"pid {os.getpid()} on "):
        Lease(store).acquire()  # this very process holds it: still refused
    path.write_bytes(_lease_record(**{**json.loads(path.read_text()), "expires": 0}))  # as if A stalled past expiry
    b = Lease(store).acquire()
    a.renew()
    with pytest.raises(LeaseError, match="lost its lease"):
        a.check()
    a.release()
    assert path.exists() and json.loads(path.read_text())["token"] == b.record["token"]  # A never deletes B's
    b.release()


# -- names from outside stay inside ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.tar", "s3://elsewhere/x.tar"])
def test_manifest_shard_names_must_stay_inside_the_corpus(reference, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(reference.root, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["shards"][0]["name"] = name
    (copy / MANIFEST).write_text(json.dumps(manifest))
    for read in (load_manifest, inspect_corpus, lambda r: list(iter_samples(r))):
        with pytest.raises(SchemaError, match=r"manifest.json: not a valid manifest.*does not stay inside"):
            read(str(copy))
    res = subprocess.run([sys.executable, "-m", "omnilv", "corpus", "inspect", str(copy)], env=env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "does not stay inside" in res.stderr and "Traceback" not in res.stderr


def test_regenerate_reads_only_sources_the_corpus_config_names(tmp_path, ray_local):
    src = tmp_path / "photos"
    src.mkdir()
    for p in sample_paths()[:3]:
        shutil.copy(p, src / p.name)
    out = tmp_path / "c"
    res = build_corpus(small_config(out, f"sources=[{{uri: '{src}'}}]", "variants_per_source=1",
                                    "mixture.exemplar_probability=0"), progress=False)
    shard = out / res.manifest.shards[0].name
    members = list(iter_members(str(shard)))
    key = members[0]["__key__"]
    assert regenerate(str(out), key).ok  # a source under the configured folder is read
    meta = json.loads(members[0]["json"])
    twin = tmp_path / "elsewhere" / Path(meta["source"]).name  # the same bytes, outside the configured folder
    twin.parent.mkdir()
    shutil.copy(meta["source"], twin)
    for source in (str(twin), "samples://../../../../../../etc/hostname", "http://127.0.0.1:9/x.png",
                   f"file://{twin}"):
        members[0]["json"] = json.dumps({**meta, "source": source}).encode()
        shard.write_bytes(tar_bytes(members))
        with pytest.raises(SourceError, match="not a bundled photo|not under any source|only local"):
            regenerate(str(out), key)


def test_latent_cache_output_deletes_only_cache_files(reference, tmp_path):
    from training.data.latent_cache import CACHE_STATE, prepare_out
    from training.data.latent_format import KIND, LatentCacheError

    out = tmp_path / "latents"
    out.mkdir()
    (out / "notes.tmp-x.txt").write_text("mine")
    for overwrite in (False, True):  # a folder of someone else's files is never a cache
        with pytest.raises(LatentCacheError, match="holds no latent cache"):
            prepare_out(Store(str(out)), reference.root, overwrite)
    with pytest.raises(LatentCacheError, match="holds a corpus|overlap"):
        prepare_out(Store(str(Path(reference.root) / "latents")), reference.root, True)
    (out / "notes.tmp-x.txt").unlink()
    prepare_out(Store(str(out)), reference.root, False)  # an empty folder is fine: it is marked ours first
    assert json.loads((out / CACHE_STATE).read_text())["kind"] == KIND
    user = {"notes.tmp-x.txt": "mine", "report-q3.pdf": "%PDF", "shard-final.tar": "kept"}
    for name, text in user.items():
        (out / name).write_text(text)
    ours = ["shard-000000.tar", "shard-000001.tar.tmp-0123abcd", "latents.json", MANIFEST]
    for name in ours:
        (out / name).write_text("x")
    (out / MANIFEST).write_text(json.dumps({"shards": [], "kind": KIND}))
    with pytest.raises(LatentCacheError, match="already holds a latent cache"):
        prepare_out(Store(str(out)), reference.root, False)
    prepare_out(Store(str(out)), reference.root, True)
    assert sorted(p.name for p in out.iterdir()) == sorted([*user, CACHE_STATE])
