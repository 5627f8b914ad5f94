"""Size a corpus build and the three training stages from what the benchmarks measured.

Every rate comes from two benchmark output files (``bench/results/corpus_build.json`` and
``bench/results/train_step.json``); the only typed-in numbers are the flags' defaults (device peak,
assumed MFU, steps, batch), and every one of them is shown next to the result it produced.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omnilv.errors import OmniLVError

CORPUS_FILE = "corpus_build.json"
TRAIN_FILE = "train_step.json"
INGEST_FILE = "ingest.json"  # optional: bench/ingest.py's samples/s per core of the training ingest
CORPUS_KEYS = ("samples_per_s_per_core", "bytes_per_sample", "resolution", "cores", "chain")
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


class PlanError(OmniLVError):
    """A missing/malformed benchmark file or a bad flag; the message names the file and key."""


@dataclass(frozen=True)
class Stage:
    """One training stage: resolution, steps and the FLOPs key of train_step.json that prices it."""

    name: str
    resolution: int
    steps: int
    flops_key: str
    note: str


@dataclass
class PlanInputs:
    """The flags of ``omnilv cluster plan``."""

    pairs: int
    resolution: int = 512
    nodes: int = 4
    gpus_per_node: int = 8
    cpus_per_node: int = 96
    cpu_nodes: int = 0
    cpus_per_cpu_node: int = 96
    samples_per_shard: int = 256        # what configs/corpus/production_40m.yaml writes
    part_mb: float = 50.0               # s3fs default block size: multipart part on write, ranged GET on read
    steps: tuple[int, int, int] = (100_000, 100_000, 10_000)
    global_batch: int = 256
    peak_tflops: float = 312.0          # A100 dense bf16
    mfu: float = 0.40
    exemplar_probability: float = 0.0   # share of samples that also store an exemplar pair (2 more images)
    png_level: int | None = None        # the corpus' PNG level (None: the benchmark's)


@dataclass
class Plan:
    inputs: dict
    sources: dict
    corpus: dict
    s3: dict
    stages: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lumen: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def parse_count(text: str | int) -> int:
    """``40M``, ``1.5B``, ``500k``, ``40_000_000`` -> int."""
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    mult = _SUFFIX.get(s[-1:], 1.0)
    num = s[:-1] if s[-1:] in _SUFFIX else s
    try:
        value = float(num) * mult
    except ValueError:
        raise PlanError(f"{text!r} is not a count (examples: 40M, 1.5B, 500k, 40000000)") from None
    if value < 1:
        raise PlanError(f"{text!r}: the count must be at least 1")
    return int(round(value))


def parse_steps(text: str) -> tuple[int, int, int]:
    parts = [p for p in str(text).split(",") if p.strip()]
    if len(parts) != 3:
        raise PlanError(f"--steps {text!r}: give three counts STAGE1,STAGE2,STAGE3 (e.g. 100k,100k,10k)")
    s1, s2, s3 = (parse_count(p) for p in parts)
    return s1, s2, s3


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise PlanError(f"{path}: not found. Run the {what} benchmark first (`make bench`) or point "
                        "--bench-dir at a folder holding its output")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise PlanError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: expected a JSON object at the top level")
    return data


def _number(data: dict, key: str, path: Path) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PlanError(f"{path}: key {key!r} must be a positive number, found {value!r}")
    return float(value)


def shipped_bench() -> Path:
    """The measured figures that ship with the package (``bench/results``, linked as ``omnilv/bench``)."""
    from importlib import resources

    return Path(str(resources.files("omnilv") / "bench"))


def load_bench(bench_dir: str | Path | None = None) -> tuple[dict, dict, dict]:
    """Read and check both files (from ``bench_dir``, else the shipped figures); returns (corpus figures,
    train figures, {name: path})."""
    bench_dir = Path(bench_dir) if bench_dir is not None else shipped_bench()
    cpath, tpath = bench_dir / CORPUS_FILE, bench_dir / TRAIN_FILE
    corpus = _read_json(cpath, "corpus build (bench/corpus_build.py)")
    for key in ("samples_per_s_per_core", "bytes_per_sample", "resolution"):
        _number(corpus, key, cpath)
    train = _read_json(tpath, "training step (bench/train_step.py)")
    flops = train.get("flops_per_sample")
    if not isinstance(flops, dict):
        raise PlanError(f"{tpath}: key 'flops_per_sample' must be an object like "
                        '{"stage1_512": ..., "stage3_1024": ...}')
    for key in ("stage1_512", "stage3_1024"):
        _number(flops, key, tpath)
    gpu = train.get("gpu")
    if gpu is not None:
        if not isinstance(gpu, dict):
            raise PlanError(f"{tpath}: key 'gpu' must be null or an object")
        _number(gpu, "samples_per_s", tpath)
    return corpus, train, {"corpus": str(cpath), "train": str(tpath)}


def stages_for(steps: tuple[int, int, int]) -> list[Stage]:
    return [
        Stage("stage1", 512, steps[0], "stage1_512", "512², instruction only (paper: 100k steps)"),
        Stage("stage2", 512, steps[1], "stage1_512",
              "512² with in-context exemplars (paper: 100k steps); exemplar tokens are added to the "
              "input tokens, not concatenated, so priced at the stage-1 FLOPs per sample"),
        Stage("stage3", 1024, steps[2], "stage3_1024", "1024² fine-tuning (length: your --steps)"),
    ]


def _gpu_key(gpu: dict, flops: dict) -> str | None:
    """Which flops_per_sample entry the GPU measurement corresponds to (by preset name, else resolution)."""
    if gpu.get("preset") in flops:
        return str(gpu["preset"])
    return {512: "stage1_512", 1024: "stage3_1024"}.get(gpu.get("resolution"))


def gpu_seconds_per_sample(stage: Stage, train: dict, p: PlanInputs) -> tuple[float, str]:
    """Seconds of one GPU per training sample, and how it was obtained."""
    flops = train["flops_per_sample"]
    gpu = train.get("gpu")
    key = _gpu_key(gpu, flops) if gpu else None
    if gpu and key and isinstance(gpu.get("mfu"), (int, float)) and gpu["mfu"] > 0:
        # The measured MFU carries over to the cluster's GPU (--peak-tflops); on the same GPU model this is
        # exactly the measured samples/s, on another (an H100 bench for an A100 cluster) it is not.
        per_sample = float(flops[stage.flops_key]) / (p.peak_tflops * 1e12 * float(gpu["mfu"]))
        return per_sample, (f"MFU {gpu['mfu']:.3g} measured on {gpu.get('device', '?')} ({key}) × "
                            f"{p.peak_tflops:g} TFLOP/s peak")
    if gpu and key:
        # Measured throughput without an MFU: rescaled by FLOPs when the stage differs from the measured preset.
        per_gpu = float(gpu["samples_per_s"]) * float(flops[key]) / float(flops[stage.flops_key])
        return 1.0 / per_gpu, f"samples/s measured on {gpu.get('device', '?')} ({key}), scaled by FLOPs"
    per_sample = float(flops[stage.flops_key]) / (p.peak_tflops * 1e12 * p.mfu)
    return per_sample, f"ESTIMATE: FLOPs / ({p.peak_tflops:g} TFLOP/s peak × {p.mfu:g} MFU)"


def corpus_shape(name_or_path: str) -> dict:
    """What sizes a corpus' samples, read from its config (a file, or a preset shipped with omnilv) with
    ``yaml.safe_load``: crop size, exemplar probability, samples per shard, PNG level."""
    from importlib import resources

    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = Path(str(resources.files("omnilv") / "presets" / "corpus" / f"{path.stem}.yaml"))
    if not path.is_file():
        raise PlanError(f"{name_or_path}: no such corpus config file or preset")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return {"resolution": int(data.get("geometry", {}).get("crop_size", 64)),
                "exemplar_probability": float(data.get("mixture", {}).get("exemplar_probability", 0.0)),
                "samples_per_shard": int(data.get("output", {}).get("samples_per_shard", 256)),
                "png_level": int(data.get("output", {}).get("png_level", 1))}
    except (AttributeError, TypeError, ValueError) as exc:
        raise PlanError(f"{path}: cannot read its sizes ({exc})") from None


def _corpus(p: PlanInputs, corpus: dict) -> dict:
    scale = (p.resolution / float(corpus["resolution"])) ** 2  # PNG bytes and synthesis cost ∝ pixels
    # Measured bytes per stored image at the bench's level, times this corpus' images per sample (input and target,
    # plus an exemplar pair for a share of them).
    per_image = float(corpus["bytes_per_sample"]) / float(corpus.get("images_per_sample", 2))
    bytes_per_sample = per_image * scale * (2 + 2 * p.exemplar_probability)
    per_core = float(corpus["samples_per_s_per_core"]) / scale
    sps = p.samples_per_shard
    cores = p.nodes * p.cpus_per_node + p.cpu_nodes * p.cpus_per_cpu_node
    core_hours = p.pairs / per_core / 3600.0
    return {"pixel_scale": scale, "images_per_sample": 2 + 2 * p.exemplar_probability,
            "bytes_per_sample": bytes_per_sample, "samples_per_s_per_core": per_core,
            "samples_per_shard": sps, "shards": math.ceil(p.pairs / sps), "shard_bytes": sps * bytes_per_sample,
            "storage_bytes": p.pairs * bytes_per_sample, "cpu_core_hours": core_hours, "build_cores": cores,
            "build_wall_hours": core_hours / cores, "build_samples_per_s": per_core * cores}


def _s3_build(p: PlanInputs, c: dict) -> dict:
    parts = math.ceil(c["shard_bytes"] / (p.part_mb * 2**20))
    # One PUT when the shard fits one part; else multipart: create + parts + complete. Plus one commit record.
    puts_per_shard = (1 if parts <= 1 else parts + 2) + 1
    shards_per_s = c["build_samples_per_s"] / c["samples_per_shard"]
    return {"parts_per_shard": parts, "puts_per_shard": puts_per_shard, "build_shards_per_s": shards_per_s,
            "build_puts_per_s": shards_per_s * puts_per_shard}


def make_plan(p: PlanInputs, bench_dir: str | Path | None = None) -> Plan:
    """The whole plan; pure arithmetic on the two benchmark files and the flags."""
    gpus = p.nodes * p.gpus_per_node
    if gpus < 1:
        raise PlanError("--nodes × --gpus-per-node must be at least 1 to price training")
    if p.cpu_nodes < 0:
        raise PlanError("--cpu-nodes must be ≥ 0")
    corpus, train, paths = load_bench(bench_dir)
    c = _corpus(p, corpus)
    s3 = _s3_build(p, c)
    stages, peak_gets = [], 0.0
    for st in stages_for(p.steps):
        sec, how = gpu_seconds_per_sample(st, train, p)
        samples = st.steps * p.global_batch
        gpu_hours = samples * sec / 3600.0
        train_sps = gpus / sec  # whole-cluster samples/s
        gets = train_sps / c["samples_per_shard"] * s3["parts_per_shard"]
        peak_gets = max(peak_gets, gets)
        stages.append({"name": st.name, "resolution": st.resolution, "steps": st.steps, "samples": samples,
                       "epochs": samples / p.pairs, "flops_per_sample": float(train["flops_per_sample"][st.flops_key]),
                       "gpu_s_per_sample": sec, "gpu_hours": gpu_hours, "wall_hours": gpu_hours / gpus,
                       "cluster_samples_per_s": train_sps, "s3_gets_per_s": gets, "method": how, "note": st.note})
    s3["train_gets_per_s_peak"] = peak_gets
    ipath = Path(paths["train"]).with_name(INGEST_FILE)
    ingest = _read_json(ipath, "ingest (bench/ingest.py)") if ipath.is_file() else None
    for st in stages:
        st.update(_ingest_cores(st, ingest, ipath))
        st.update(_activation_memory(st, train, p, gpus))
    notes = _notes(p, train, corpus)
    sources = {"corpus_build": {"path": paths["corpus"], **{k: corpus.get(k) for k in CORPUS_KEYS}},
               "train_step": {"path": paths["train"], "flops_per_sample": train["flops_per_sample"],
                              "gpu": train.get("gpu"),
                              "activation_per_token_per_layer": train.get("activation_bytes_per_token_per_layer")}}
    if ingest is not None:
        sources["ingest"] = {"path": str(ipath), "cores": ingest.get("cores")}
    inputs = {**asdict(p), "steps": list(p.steps), "gpus": gpus}
    return Plan(inputs=inputs, sources=sources, corpus=c, s3=s3, stages=stages, notes=notes, lumen=lumen_stages(p))


#: LLaVA-1.5-7B, what lumen_stage1/2.yaml load: parameters, and tokens per sample (576 CLIP-L/336 patches plus the
#: instruction and the special tokens).
LUMEN_LMM_PARAMS = 7.06e9
LUMEN_TOKENS = 576 + 48
LUMEN_CONFIGS = ("lumen_stage1", "lumen_stage2")


def lumen_stages(p: PlanInputs) -> list[dict]:
    """The Lumen stages as their shipped configs set them, priced as an ESTIMATE: the frozen LMM's forward pass
    (2 FLOPs per parameter per token; no backward through it) dominates; the aligner and decoders are small."""
    from importlib import resources

    import yaml

    gpus = p.nodes * p.gpus_per_node
    flops = 2 * LUMEN_LMM_PARAMS * LUMEN_TOKENS
    out = []
    for name in LUMEN_CONFIGS:
        cfg = yaml.safe_load((Path(str(resources.files("omnilv") / "presets" / "train")) / f"{name}.yaml")
                             .read_text())
        steps, batch = int(cfg["schedule"]["steps"]), int(cfg["data"]["batch_size"])
        samples = steps * batch * int(cfg.get("optim", {}).get("grad_accum", 1)) * gpus
        sec = flops / (p.peak_tflops * 1e12 * p.mfu)
        out.append({"name": name, "part": cfg["model"]["lumen"]["part"], "steps": steps, "samples": samples,
                    "flops_per_sample": flops, "gpu_hours": samples * sec / 3600.0,
                    "wall_hours": samples * sec / 3600.0 / gpus})
    return out


def _ingest_cores(stage: dict, ingest: dict | None, path: Path) -> dict:
    """CPU cores per GPU the ingest needs to keep up: training samples/s per GPU ÷ ingest samples/s per core at the
    stage's resolution (None without ``ingest.json`` or a figure at that resolution)."""
    res = (ingest or {}).get("resolutions", {}).get(str(stage["resolution"]))
    if not isinstance(res, dict) or not isinstance(res.get("ours"), dict):
        return {"ingest_cores_per_gpu": None}
    per_core = _number(res["ours"], "samples_per_s_per_core", path)
    return {"ingest_samples_per_s_per_core": per_core,
            "ingest_cores_per_gpu": 1.0 / stage["gpu_s_per_sample"] / per_core}


#: The shape of the ``2b`` preset (training/model/presets.py), which cluster may not import; a train_step.json that
#: records ``activation_memory["2b"]`` overrides it.
TWO_B = {"hidden_size": 2304, "patch_size": 2, "num_layers": 24}


def _activation_memory(stage: dict, train: dict, p: PlanInputs, gpus: int) -> dict:
    """Activation bytes per GPU, with and without checkpointing: the bench's bytes per token per layer scaled by the
    2B width over the bench's, times the stage's tokens and the 2B's layers, times samples per GPU per step.
    Checkpointed, one layer is recomputed at a time in the backward: that layer's uncheckpointed bytes come on top."""
    per_tl, mem = train.get("activation_bytes_per_token_per_layer"), train.get("activation_memory")
    if not isinstance(per_tl, dict) or not isinstance(mem, dict):
        return {"activation_bytes_per_gpu": None}
    big = {**TWO_B, **(mem.get("2b") or {})}
    width = big["hidden_size"] / float(mem["hidden_size"])
    tokens = (stage["resolution"] // 8 // big["patch_size"]) ** 2  # 8× VAE latent, one token per patch
    per_gpu = p.global_batch / gpus  # samples per GPU per step (no gradient accumulation)
    without = per_tl["without_checkpointing"] * width * tokens
    with_ck = per_tl["with_checkpointing"] * width * tokens * big["num_layers"] + without
    return {"tokens": tokens, "samples_per_gpu_step": per_gpu, "activation_bytes_per_gpu": {
        "without_checkpointing": without * big["num_layers"] * per_gpu, "with_checkpointing": with_ck * per_gpu}}


def _notes(p: PlanInputs, train: dict, corpus: dict) -> list[str]:
    notes = []
    if train.get("gpu") is None:
        notes.append(f"GPU time is an ESTIMATE: train_step.json has no GPU measurement (gpu: null — the benchmark "
                     f"ran without a GPU), so it is FLOPs per sample / ({p.peak_tflops:g} TFLOP/s × MFU {p.mfu:g}). "
                     "Change with --peak-tflops/--mfu, or run bench/train_step.py on one GPU node.")
    if p.resolution != corpus["resolution"]:
        notes.append(f"Corpus figures were measured at {corpus['resolution']}² and scaled by pixel count to "
                     f"{p.resolution}² (×{(p.resolution / corpus['resolution']) ** 2:g}).")
    if p.resolution < 1024:
        notes.append("Stage 3 trains at 1024²: it needs a corpus built at ≥1024 (size it with --resolution 1024).")
    notes.append("Build wall-clock assumes throughput scales linearly with cores and S3 keeps up "
                 "(AWS: ~3,500 PUT/s and ~5,500 GET/s per prefix partition).")
    return notes
