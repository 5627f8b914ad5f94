"""SIGKILL the `omnilv corpus build` process half-way, rerun it: the corpus equals an uninterrupted build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corpus_helpers import SMALL, corpus_files

from pipelines.inspect import inspect_corpus
from pipelines.read import iter_samples
from pipelines.schema import MANIFEST


def cli(out: Path, *extra: str) -> list[str]:
    sets = [a for s in (*SMALL, f"output.path={out}") for a in ("--set", s)]
    return [sys.executable, "-m", "omnilv", "corpus", "build", *sets, "--workers", "1", "--quiet", *extra]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own, never a stranger's
    return {**e, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(out), env=env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    commits = out / "_commits"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(commits.glob("*.json"))) < 5 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait(timeout=30)
    done_before = len(list(commits.glob("*.json")))
    assert 5 <= done_before < 10, f"kill landed at {done_before}/10 shards; stderr: {proc.stderr.read()[-2000:]}"
    assert not (out / MANIFEST).exists()  # nothing is listed before the build finishes

    rerun = subprocess.run(cli(out), env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert corpus_files(out) == corpus_files(reference.root)
    report = json.loads((out / "report.json").read_text())
    print(f"killed at {done_before}/10 committed shards; rerun resumed {report['resumed_shards']}, built "
          f"{report['built_shards']}")
    assert report["resumed_shards"] >= done_before - 1 and report["samples"] == 38
    keys = [s.key for s in iter_samples(str(out))]
    assert len(keys) == len(set(keys)) == 38  # the manifest lists no orphan: duplicates == 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert inspect_corpus(str(out)).ok


def omnilv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnilv", "corpus", *args], capture_output=True, text=True,
                          timeout=120, env=env())


def test_cli_preview_and_regenerate(reference, tmp_path):
    from pipelines.read import iter_samples

    sheet = tmp_path / "sheet.png"
    out = omnilv("preview", reference.root, "--out", str(sheet), "--rows", "4")
    assert out.returncode == 0 and sheet.read_bytes().startswith(b"\x89PNG"), out.stderr
    key = next(s.key for s in iter_samples(reference.root) if "exemplar" in s.meta)
    out = omnilv("regenerate", reference.root, key)
    assert out.returncode == 0 and out.stdout.count("identical") == 4, out.stdout + out.stderr
    missing = omnilv("regenerate", reference.root, "nosuchkey_000")
    assert missing.returncode == 2 and "no sample with key" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_refuses_changed_config_and_inspect_exit_codes(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference.root, copy)
    refused = subprocess.run(cli(copy, "--set", "output.seed=9"), env=env(), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "different config" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = omnilv("inspect", str(copy))
    assert ok.returncode == 0 and "OK" in ok.stdout
    (copy / reference.manifest.shards[0].name).write_bytes(b"not a tar")
    bad = omnilv("inspect", str(copy))
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout


def test_resume_refuses_shards_of_another_plugin_kernel_version(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference.root, copy)
    state = json.loads((copy / "_build.json").read_text())
    from degradations import registry

    assert state["plugin_versions"]["gaussian_noise"] == registry.get("gaussian_noise").version > 1
    state["plugin_versions"]["gaussian_noise"] = 1  # as if built before the faster noise kernel
    (copy / "_build.json").write_text(json.dumps(state))
    refused = subprocess.run(cli(copy), env=env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "plugin kernel versions" in refused.stderr, refused.stderr[-2000:]

