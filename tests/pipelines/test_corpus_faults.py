"""Faults inside a shard task: a worker killed on its first attempt is retried into the same bytes; a writer that
fails publishes nothing (every fault driven by a count or a marker, never by the clock)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from corpus_helpers import corpus_files, small_config

from pipelines.build import BuildError, build_corpus
from pipelines.inspect import inspect_corpus
from pipelines.read import iter_samples, load_manifest
from pipelines.schema import SchemaError


def test_a_shard_task_killed_on_its_first_attempt_is_retried_into_the_same_bytes(reference, tmp_path, ray_local):
    marker = tmp_path / "killed"
    out = tmp_path / "c"
    res = build_corpus(small_config(out), progress=False, workers=2, kill_once=(3, str(marker)))
    assert marker.exists(), "the fault was not injected"  # shard 3's first attempt died after its tar
    keys = [s.key for s in iter_samples(str(out))]
    assert res.manifest.samples == len(keys) == len(set(keys)) == 38  # unique samples == N
    assert inspect_corpus(str(out)).ok  # bad tars == 0
    assert corpus_files(out) == corpus_files(reference.root)


def test_a_shard_task_that_dies_for_good_publishes_nothing(tmp_path, ray_local):
    out = tmp_path / "c"
    with pytest.raises(BuildError, match="shard-000001.tar failed after 0 retries"):
        build_corpus(small_config(out, "runtime.retries=0"), progress=False, workers=1,
                     kill_once=(1, str(tmp_path / "killed")))
    assert (out / "shard-000001.tar").exists()  # written, then its task died before the commit record ...
    with pytest.raises(SchemaError, match="no manifest"):
        load_manifest(str(out))  # ... yet no reader sees it: short shards visible == 0


WRITER = """
import errno, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG as an exception, as on a full disk or quota
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
from pipelines.storage import Store
try:
    Store(sys.argv[1]).write("shard-000000.tar", b"x" * 200_000)
    print("written")
except OSError as exc:
    print("EFBIG" if exc.errno == errno.EFBIG else repr(exc))
"""


def test_an_exception_inside_the_shard_writer_leaves_no_partial_file(tmp_path):
    out = tmp_path / "c"
    res = subprocess.run([sys.executable, "-c", WRITER, str(out)], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "EFBIG", res.stdout + res.stderr
    assert [p.name for p in out.iterdir()] == []  # neither a short shard nor a temp
