"""`omnilv cluster plan`: every number follows from the recorded benchmark files and the flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster import plan as pl
from omnilv.cli import app

DATA = Path(__file__).with_name("data")
runner = CliRunner()


def _bench(name: str) -> tuple[dict, dict]:
    return (json.loads((DATA / name / "corpus_build.json").read_text()),
            json.loads((DATA / name / "train_step.json").read_text()))


def _plan(*args: str, bench: str = "bench") -> dict:
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(DATA / bench), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_corpus_numbers_follow_from_the_corpus_bench():
    corpus, _ = _bench("bench")
    p = _plan("--pairs", "40M", "--resolution", "512", "--nodes", "4", "--cpus-per-node", "96",
              "--cpu-nodes", "2", "--cpus-per-cpu-node", "64", "--samples-per-shard", "256")
    c = p["corpus"]
    scale = (512 / corpus["resolution"]) ** 2
    assert c["bytes_per_sample"] == pytest.approx(corpus["bytes_per_sample"] * scale)
    assert c["storage_bytes"] == pytest.approx(40e6 * corpus["bytes_per_sample"] * scale)
    assert c["shards"] == math.ceil(40e6 / 256)
    core_hours = 40e6 / (corpus["samples_per_s_per_core"] / scale) / 3600
    assert c["cpu_core_hours"] == pytest.approx(core_hours)
    assert c["build_cores"] == 4 * 96 + 2 * 64
    assert c["build_wall_hours"] == pytest.approx(core_hours / (4 * 96 + 2 * 64))
    # S3 PUTs: each shard (256 × bytes/sample) in 50 MiB parts (+create/complete), plus one commit record.
    parts = math.ceil(256 * corpus["bytes_per_sample"] * scale / (50 * 2**20))
    shards_per_s = (corpus["samples_per_s_per_core"] / scale) * (4 * 96 + 2 * 64) / 256
    assert p["s3"]["build_puts_per_s"] == pytest.approx(shards_per_s * ((parts + 2 if parts > 1 else 1) + 1))
    assert p["sources"]["corpus_build"]["path"].endswith("bench/corpus_build.json")
    assert p["sources"]["corpus_build"]["samples_per_s_per_core"] == corpus["samples_per_s_per_core"]


def test_gpu_hours_are_an_estimate_from_flops_when_no_gpu_was_measured():
    _, train = _bench("bench")
    assert train["gpu"] is None
    p = _plan("--steps", "100k,50k,10k", "--global-batch", "512", "--nodes", "2", "--peak-tflops", "312",
              "--mfu", "0.4")
    flops = train["flops_per_sample"]
    expected = {"stage1": 100_000 * 512 * flops["stage1_512"], "stage2": 50_000 * 512 * flops["stage1_512"],
                "stage3": 10_000 * 512 * flops["stage3_1024"]}
    for st in p["stages"]:
        hours = expected[st["name"]] / (312e12 * 0.4) / 3600
        assert st["gpu_hours"] == pytest.approx(hours)
        assert st["wall_hours"] == pytest.approx(hours / 16)
        assert st["method"].startswith("ESTIMATE")
    assert [st["resolution"] for st in p["stages"]] == [512, 512, 1024]
    assert any("ESTIMATE" in n and "gpu: null" in n for n in p["notes"])
    # GETs/s while training: cluster samples/s ÷ samples per shard × ranged GETs per shard.
    st1 = p["stages"][0]
    assert st1["s3_gets_per_s"] == pytest.approx(16 / st1["gpu_s_per_sample"] / 256 * p["s3"]["parts_per_shard"])


def test_measured_gpu_throughput_is_used_and_scaled_by_flops():
    _, train = _bench("bench_gpu")
    gpu, flops = train["gpu"], train["flops_per_sample"]
    p = _plan("--steps", "100k,100k,10k", "--global-batch", "256", "--mfu", "0.1", "--peak-tflops", "312",
              bench="bench_gpu")
    s1, s2, s3 = p["stages"]
    assert s1["gpu_hours"] == pytest.approx(100_000 * 256 / gpu["samples_per_s"] / 3600)  # --mfu plays no part
    rate3 = gpu["samples_per_s"] * flops["stage1_512"] / flops["stage3_1024"]
    assert s3["gpu_hours"] == pytest.approx(10_000 * 256 / rate3 / 3600)
    assert f"measured on {gpu['device']}" in s1["method"]
    assert not any("ESTIMATE" in n for n in p["notes"])
    # The measured MFU carries to another GPU: an H100-class peak (989 TFLOP/s) shortens every stage.
    h100 = _plan("--steps", "100k,100k,10k", "--global-batch", "256", "--peak-tflops", "989", bench="bench_gpu")
    assert h100["stages"][0]["gpu_hours"] == pytest.approx(s1["gpu_hours"] * 312 / 989)


def test_human_output_shows_sources_and_says_estimate():
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(DATA / "bench")])
    assert r.exit_code == 0, r.output
    assert "corpus_build.json" in r.output and "train_step.json" in r.output
    assert '"samples_per_s_per_core": 3.2' in r.output
    assert "estimate" in r.output and "ESTIMATE" in r.output
    assert "stage3" in r.output and "S3 request rates" in r.output


@pytest.mark.parametrize("text, value", [("40M", 40_000_000), ("1.5B", 1_500_000_000), ("500k", 500_000),
                                          ("40_000_000", 40_000_000)])
def test_parse_count(text, value):
    assert pl.parse_count(text) == value


def test_errors_name_the_file_and_key(tmp_path):
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(tmp_path)])
    assert r.exit_code == 2 and "corpus_build.json: not found" in r.output
    (tmp_path / "corpus_build.json").write_text(json.dumps({"samples_per_s_per_core": 1, "bytes_per_sample": -5,
                                                            "resolution": 256}))
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(tmp_path)])
    assert r.exit_code == 2 and "'bytes_per_sample' must be a positive number" in r.output
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(DATA / "bench"), "--steps", "100k"])
    assert r.exit_code == 2 and "three counts" in r.output
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(DATA / "bench"), "--nodes", "0"])
    assert r.exit_code == 2 and "at least 1" in r.output
    assert "Traceback" not in r.output


def test_plan_reads_the_repository_bench_results_when_present():
    bench = Path(__file__).resolve().parents[2] / "bench" / "results"
    if not (bench / pl.CORPUS_FILE).is_file() or not (bench / pl.TRAIN_FILE).is_file():
        pytest.skip("bench/results/ has not both benchmark outputs yet (make bench)")
    corpus = json.loads((bench / pl.CORPUS_FILE).read_text())
    p = _plan_at(bench, "--resolution", str(corpus["resolution"]))
    assert p["corpus"]["bytes_per_sample"] == pytest.approx(corpus["bytes_per_sample"])
    assert p["corpus"]["samples_per_s_per_core"] == pytest.approx(corpus["samples_per_s_per_core"])


def _plan_at(bench: Path, *args: str) -> dict:
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(bench), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)
