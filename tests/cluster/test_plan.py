"""`omnilv cluster plan`: every number follows from the recorded benchmark files and the flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster import plan as pl
from omnilv.cli import app

DATA = Path(__file__).with_name("data")
runner = CliRunner()


def _plan(*args: str, bench: str = "bench") -> dict:
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(DATA / bench), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


# The expected figures below are worked out by hand from the fixture files (tests/cluster/data/) and the
# flags, not by re-running the planner's formulas: each comment shows the arithmetic.
# data/bench/corpus_build.json: 3.2 samples/s per core, 180,000 bytes per sample, measured at 256².
# data/bench/train_step.json: 4.2e12 FLOPs per sample at 512², 1.8e13 at 1024², no GPU measurement.
# data/bench_gpu/train_step.json: the same FLOPs, 40 samples/s of the 2B preset at 512² on an A100, MFU 0.538.


def test_corpus_numbers_follow_from_the_corpus_bench():
    p = _plan("--pairs", "40M", "--resolution", "512", "--nodes", "4", "--cpus-per-node", "96",
              "--cpu-nodes", "2", "--cpus-per-cpu-node", "64", "--samples-per-shard", "256")
    c = p["corpus"]
    assert c["pixel_scale"] == 4.0  # (512 / 256)² pixels
    assert c["bytes_per_sample"] == pytest.approx(720_000)  # 180,000 B × 4
    assert c["storage_bytes"] == pytest.approx(2.88e13)  # 40M × 720,000 B = 28.8 TB
    assert c["samples_per_s_per_core"] == pytest.approx(0.8)  # 3.2 / 4
    assert c["shards"] == 156_250  # 40,000,000 / 256, exactly
    assert c["shard_bytes"] == pytest.approx(184_320_000)  # 256 × 720,000 B (175.8 MiB)
    assert c["cpu_core_hours"] == pytest.approx(13_888.889, rel=1e-6)  # 40M / 0.8 = 5e7 core-s / 3600
    assert c["build_cores"] == 512  # 4 × 96 + 2 × 64
    assert c["build_wall_hours"] == pytest.approx(27.126736, rel=1e-6)  # 13,888.89 / 512
    assert c["build_samples_per_s"] == pytest.approx(409.6)  # 0.8 × 512
    s3 = p["s3"]
    assert s3["parts_per_shard"] == 4  # 184.32 MB / 50 MiB (52,428,800 B) = 3.52 -> 4 parts
    assert s3["puts_per_shard"] == 7  # multipart: create + 4 parts + complete, + 1 commit record
    assert s3["build_shards_per_s"] == pytest.approx(1.6)  # 409.6 / 256
    assert s3["build_puts_per_s"] == pytest.approx(11.2)  # 1.6 × 7
    assert p["sources"]["corpus_build"]["path"].endswith("bench/corpus_build.json")
    assert p["sources"]["corpus_build"]["samples_per_s_per_core"] == 3.2
    # Parts are MiB: 290 × 720,000 B = 208.8 MB is 3.98 parts of 50 MiB (4), but 4.18 of 50 MB (5).
    assert _plan("--samples-per-shard", "290")["s3"]["parts_per_shard"] == 4


def test_gpu_hours_are_an_estimate_from_flops_when_no_gpu_was_measured():
    p = _plan("--steps", "100k,50k,10k", "--global-batch", "512", "--nodes", "2", "--peak-tflops", "312",
              "--mfu", "0.4")
    # 2 nodes × 8 GPUs = 16 GPUs, each 312 TFLOP/s × 0.4 = 124.8 TFLOP/s.
    s1, s2, s3 = p["stages"]
    assert s1["gpu_s_per_sample"] == pytest.approx(0.0336538, rel=1e-5)  # 4.2e12 / 124.8e12
    assert s1["samples"] == 51_200_000 and s1["epochs"] == pytest.approx(1.28)  # 100k × 512; / 40M pairs
    assert s1["gpu_hours"] == pytest.approx(478.6325, rel=1e-6)  # 51.2M × 0.0336538 s = 1,723,077 s
    assert s1["wall_hours"] == pytest.approx(29.91453, rel=1e-6)  # 478.63 / 16
    assert s2["gpu_hours"] == pytest.approx(239.3162, rel=1e-6)  # 50k × 512 = 25.6M samples at stage 1's cost
    assert s3["gpu_hours"] == pytest.approx(205.1282, rel=1e-6)  # 5.12M × 1.8e13 / 124.8e12 = 738,462 s
    assert all(st["method"].startswith("ESTIMATE") for st in p["stages"])
    assert [st["resolution"] for st in p["stages"]] == [512, 512, 1024]
    assert any("ESTIMATE" in n and "gpu: null" in n for n in p["notes"])
    # GETs/s while training: 16 / 0.0336538 = 475.43 samples/s over the cluster, / 256 per shard = 1.857
    # shards/s, × 4 ranged GETs per shard (its 4 parts of 50 MiB at the default 512², 256 per shard).
    assert s1["cluster_samples_per_s"] == pytest.approx(475.42857, rel=1e-6)
    assert s1["s3_gets_per_s"] == pytest.approx(7.428571, rel=1e-6)


def test_measured_gpu_throughput_is_used_and_scaled_by_flops():
    p = _plan("--steps", "100k,100k,10k", "--global-batch", "256", "--mfu", "0.1", "--peak-tflops", "312",
              bench="bench_gpu")
    s1, s2, s3 = p["stages"]
    # The measured MFU 0.538 × 312 TFLOP/s = 168 TFLOP/s: 4.2e12 / 168e12 = 0.025 s per sample, i.e. the
    # measured 40 samples/s; --mfu 0.1 plays no part.
    assert s1["gpu_s_per_sample"] == pytest.approx(0.025)
    assert s1["gpu_hours"] == pytest.approx(177.7778, rel=1e-6)  # 100k × 256 = 25.6M × 0.025 s = 640,000 s
    assert s3["gpu_s_per_sample"] == pytest.approx(0.1071429, rel=1e-6)  # 1.8e13 / 168e12
    assert s3["gpu_hours"] == pytest.approx(76.19048, rel=1e-6)  # 2.56M × 0.10714 s = 274,286 s
    assert "measured on NVIDIA A100-SXM4-80GB" in s1["method"]
    assert not any("ESTIMATE" in n for n in p["notes"])
    # The measured MFU carries to another GPU: at an H100's 989 TFLOP/s, 0.538 × 989 = 532.5 TFLOP/s,
    # 126.8 samples/s per GPU, so 25.6M samples take 201,900 s = 56.08 GPU-hours.
    h100 = _plan("--steps", "100k,100k,10k", "--global-batch", "256", "--peak-tflops", "989", bench="bench_gpu")
    assert h100["stages"][0]["gpu_hours"] == pytest.approx(56.08359, rel=1e-6)


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


def test_bytes_per_sample_follow_the_corpus_config(tmp_path):
    """production_40m: 512² crops, exemplar probability 0.5, 256 samples per shard. The bench stored 180,000 bytes
    per sample of 2 images at 256²: 90,000 per image; ×4 pixels at 512² = 360,000; × (2 + 2 × 0.5) = 3 images
    -> 1,080,000 bytes per sample, and 1,000 pairs need ceil(1000 / 256) = 4 shards."""
    shape = pl.corpus_shape("production_40m")
    assert shape == {"resolution": 512, "exemplar_probability": 0.5, "samples_per_shard": 256, "png_level": 1}
    p = pl.PlanInputs(pairs=1000, resolution=shape["resolution"], samples_per_shard=shape["samples_per_shard"],
                      exemplar_probability=shape["exemplar_probability"])
    corpus = pl.make_plan(p, DATA / "bench").corpus
    assert corpus["bytes_per_sample"] == 1_080_000 and corpus["shards"] == 4
    (tmp_path / "c.yaml").write_text("geometry: {crop_size: 256}\nmixture: {exemplar_probability: 0}\n")
    assert pl.corpus_shape(str(tmp_path / "c.yaml"))["exemplar_probability"] == 0.0
    with pytest.raises(pl.PlanError, match="no such corpus config"):
        pl.corpus_shape("no_such_corpus")


def _bench_with_ingest_and_memory(tmp_path: Path) -> Path:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "corpus_build.json").write_text((DATA / "bench" / "corpus_build.json").read_text())
    train = json.loads((DATA / "bench" / "train_step.json").read_text())
    train["activation_memory"] = {"hidden_size": 128, "num_layers": 4, "tokens": 4096}
    train["activation_bytes_per_token_per_layer"] = {"without_checkpointing": 1000.0, "with_checkpointing": 100.0}
    (bench / "train_step.json").write_text(json.dumps(train))
    (bench / "ingest.json").write_text(json.dumps({"cores": 2, "resolutions": {
        "512": {"ours": {"samples_per_s_per_core": 12.5}}, "1024": {"ours": {"samples_per_s_per_core": 2.5}}}}))
    return bench


def test_ingest_cores_per_gpu_and_activation_memory_follow_from_the_bench_files(tmp_path):
    p = _plan_at(_bench_with_ingest_and_memory(tmp_path), "--peak-tflops", "420", "--mfu", "0.5",
                 "--nodes", "4", "--gpus-per-node", "8", "--global-batch", "256")
    s1, _, s3 = p["stages"]
    # 420 TFLOP/s × 0.5 = 210 TFLOP/s per GPU. 512²: 4.2e12 / 2.1e14 = 0.02 s -> 50 samples/s per GPU.
    assert s1["ingest_cores_per_gpu"] == pytest.approx(4.0)  # 50 / 12.5 samples/s per core
    # 1024²: 1.8e13 / 2.1e14 = 0.0857 s -> 11.667 samples/s per GPU; / 2.5 per core = 4.667 cores.
    assert s3["ingest_cores_per_gpu"] == pytest.approx(14 / 3)
    # 2B: width 2304 / 128 = 18×; 512² -> 64² latent / patch 2 = 1,024 tokens; 24 layers; 256 / 32 GPUs = 8 samples.
    assert s1["tokens"] == 1024 and s3["tokens"] == 4096
    mem = s1["activation_bytes_per_gpu"]
    assert mem["without_checkpointing"] == pytest.approx(1000 * 18 * 1024 * 24 * 8)  # 3.54 GB
    # Checkpointed: 100 B per token per layer kept, plus one layer recomputed at a time (1000 B per token).
    assert mem["with_checkpointing"] == pytest.approx((100 * 18 * 1024 * 24 + 1000 * 18 * 1024) * 8)  # 501 MB
    assert p["sources"]["ingest"]["cores"] == 2


def test_plan_works_without_ingest_json_and_says_cores_per_gpu_with_it(tmp_path):
    p = _plan()  # data/bench has no ingest.json and no activation figures
    assert all(st["ingest_cores_per_gpu"] is None and st["activation_bytes_per_gpu"] is None for st in p["stages"])
    assert "ingest" not in p["sources"]
    r = runner.invoke(app, ["cluster", "plan", "--bench-dir", str(_bench_with_ingest_and_memory(tmp_path)),
                            "--peak-tflops", "420", "--mfu", "0.5"])
    assert r.exit_code == 0, r.output
    assert "ingest CPU cores per GPU, stage1 (512²): 4 (50 samples/s per GPU ÷ 12.5" in r.output
    assert "activation memory per GPU, stage3 (4,096 tokens × 8 samples)" in r.output


def test_the_lumen_stages_are_priced_from_their_shipped_configs():
    import yaml

    p = pl.PlanInputs(pairs=10**6, nodes=2, gpus_per_node=8)
    plan = pl.make_plan(p)
    assert [s["name"] for s in plan.lumen] == ["lumen_stage1", "lumen_stage2"]
    for st in plan.lumen:
        cfg = yaml.safe_load((Path("configs/train") / f"{st['name']}.yaml").read_text())
        assert st["steps"] == cfg["schedule"]["steps"] and st["part"] == cfg["model"]["lumen"]["part"]
        assert st["samples"] == st["steps"] * cfg["data"]["batch_size"] * 16
        seconds = st["flops_per_sample"] / (p.peak_tflops * 1e12 * p.mfu)
        assert st["gpu_hours"] == pytest.approx(st["samples"] * seconds / 3600)
    out = CliRunner().invoke(app, ["cluster", "plan", "--pairs", "1M"]).output
    assert "Lumen lumen_stage1 (aligner" in out and "ESTIMATE" in out
