"""``omnilv rehearse``: the production path, as the configs write it, end to end in miniature.

The 512² corpus -> the 1024² corpus -> stage 1 -> stage 2 (in-context, from stage 1) -> stage 3 (1024², from
stage 2) -> restore and eval with the stage-3 export. Every corpus path and every ``init_from`` is read from the
configs; the rehearsal changes only sizes (:func:`corpus_overrides`, :func:`stage_overrides`, printed before it
starts), so a joint that does not connect fails here, on a laptop, not on 32 A100s. ``--s3 local`` serves the
configs' ``s3://`` buckets from a real S3 endpoint on loopback (``moto_server``) that the command starts itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnilv.errors import OmniLVError
from pipelines import CorpusConfig, join, load_corpus_config
from training.config import TrainConfig, load_train_config

CORPORA = ("production_40m", "production_1024")
STAGES = ("stage1_512", "stage2_incontext", "stage3_1024")
SCALE = 8  # every pixel size of the production configs is divided by this
STEPS = 4  # optimizer steps of each rehearsed stage


class JointError(OmniLVError):
    """Two steps of the production path do not connect; the message names the joint and both ends."""


@dataclass
class Step:
    """One step of the rehearsal: what it reads, what it writes, and how it went."""

    name: str
    kind: str  # "corpus", "train", "restore", "eval"
    config: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    loss: tuple[float, float] | None = None
    seconds: float = 0.0
    status: str = "planned"


def corpus_overrides(cfg: CorpusConfig, local_sources: bool) -> list[str]:
    """The size changes of a production corpus config (its output path, mixture and seed stay as written)."""
    crop = cfg.geometry.crop_size // SCALE
    out = ["variants_per_source=6", f"geometry.crop_size={crop}", f"geometry.min_size={crop}",
           f"geometry.resize_short={cfg.geometry.resize_short // SCALE}", "output.samples_per_shard=8",
           "runtime.workers=2"]
    if not local_sources:  # no local S3 to hold a source list: the bundled photos instead (the one source change)
        out += ["sources=[{uri: 'samples://', limit: 4}]"]
    return out


def stage_overrides(cfg: TrainConfig, release: str = "STAND-IN") -> list[str]:
    """The size changes of a production stage config: the tiny model and encoders, small crops, a few steps on
    2 CPU workers; a pretrained backbone is replaced by a tiny stand-in release (``release``) of the same layout.
    Data paths, ``init_from``, ZeRO stage, precision, EMA, activation checkpointing and storage stay as written."""
    d = cfg.data
    out = ["model.preset=tiny", "text=tiny", "text_layer=-1", "codec=pixel", f"data.resolution={d.resolution // SCALE}",
           "data.batch_size=2", "data.read_cpus=0.25", "data.max_read_tasks=2", f"schedule.steps={STEPS}",
           "schedule.checkpoint_every=2", "schedule.eval_every=0", "schedule.log_every=1", "run.workers=2",
           "run.use_gpu=false", "run.cpus_per_worker=0.5", "run.max_failures=0"]
    if d.buckets:
        out.append(f"data.buckets={json.dumps([[h // SCALE, w // SCALE] for h, w in d.buckets])}")
    if cfg.model.pretrained:
        out.append(f"model.pretrained={release}")
    return out


def stand_in_release(folder: Path) -> str:
    """A tiny random Lumina-Next release (diffusers ``save_pretrained`` layout) for the rehearsed stage 1."""
    from training.model import TextEncoder, preset, save_release

    fields = {**preset("tiny"), "cross_attention_dim": TextEncoder.from_spec("tiny").dim, "in_channels": 3}
    fields["num_kv_heads"] = fields.get("num_kv_heads") or fields["num_attention_heads"]  # diffusers needs a number
    return str(save_release(folder, fields))


def export_of(cfg: TrainConfig) -> str:
    return join(cfg.run.storage_path, cfg.run_name, "export")


def resolve_init(cfg: TrainConfig) -> str:
    """``stage.init_from`` as the driver will read it (a bare run name is that run's export on this storage)."""
    from training.run import absolute

    return absolute(cfg).stage.init_from


def plan(corpora: tuple[str, ...] = CORPORA, stages: tuple[str, ...] = STAGES) -> list[Step]:
    """The steps and their joints, read from the configs as written; a :class:`JointError` names the first joint
    that does not connect."""
    built = {}
    steps = []
    for name in corpora:
        cfg = load_corpus_config(name)
        built[cfg.output.path.rstrip("/")] = cfg
        steps.append(Step(f"corpus {cfg.geometry.crop_size}²", "corpus", name,
                          [s.uri for s in cfg.sources], [cfg.output.path]))
    exports: dict[str, str] = {}
    last: TrainConfig | None = None
    for name in stages:
        cfg = load_train_config(name)
        corpus = (cfg.data.latents or cfg.data.corpus).rstrip("/")
        if corpus not in built:
            raise JointError(f"{name}: data.corpus {corpus!r} is written by no corpus config of the path "
                             f"({', '.join(sorted(built))})")
        crop = built[corpus].geometry.crop_size
        if max(cfg.data.resolution, *(max(b) for b in cfg.data.buckets or [(0, 0)])) > crop:
            raise JointError(f"{name}: trains at {cfg.data.resolution}² (buckets {cfg.data.buckets}) on {corpus}, a "
                             f"corpus of {crop}² crops: every sample would be upsampled")
        init = resolve_init(cfg)
        if init and init.rstrip("/") not in exports:
            raise JointError(f"{name}: stage.init_from {cfg.stage.init_from!r} ({init}) is not the export of an "
                             f"earlier stage ({', '.join(exports) or 'none'})")
        if last is not None and not init:
            raise JointError(f"{name}: starts from random weights (no stage.init_from) after {last.stage.name}")
        exports[export_of(cfg).rstrip("/")] = name
        steps.append(Step(cfg.stage.name, "train", name, [corpus] + ([init] if init else []), [export_of(cfg)]))
        last = cfg
    if last is not None:
        corpus = last.data.corpus
        steps.append(Step("restore", "restore", "", [export_of(last), corpus], ["restored.png"]))
        steps.append(Step("eval", "eval", "", [export_of(last), corpus], ["eval/results.json"]))
    return steps


def run(steps: list[Step], out: Path, local_s3: bool, progress: bool = True) -> list[Step]:
    """Run the planned steps in order; the first that fails stops the rehearsal (its step says why)."""
    from pipelines import build_corpus, ensure_ray
    from training.run import run_stage

    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(None)
    for step in steps:
        t0 = time.perf_counter()
        step.status = "running"
        try:
            if step.kind == "corpus":
                cfg = load_corpus_config(step.config, corpus_overrides(load_corpus_config(step.config), local_s3))
                build_corpus(cfg, progress=progress, workers=2)
            elif step.kind == "train":
                release = stand_in_release(out / "lumina-next") if load_train_config(step.config).model.pretrained \
                    else ""
                cfg = load_train_config(step.config, stage_overrides(load_train_config(step.config), release))
                result = run_stage(cfg, progress=progress)
                step.loss = (float(result.metrics.get("loss_first", float("nan"))), float(result.metrics["loss"]))
            elif step.kind == "restore":
                step.outputs = [str(restore_one(step.inputs[0], step.inputs[1], out))]
            else:
                from training.eval import evaluate

                evaluate(step.inputs[0], step.inputs[1], out / "eval", limit=4, steps=2)
                step.outputs = [str(out / "eval" / "results.json")]
        except Exception as exc:  # noqa: BLE001 - the rehearsal reports which joint broke, then re-raises
            step.status, step.seconds = "FAILED", time.perf_counter() - t0
            raise JointError(f"{step.name} ({step.config or step.kind}) failed: {reason(exc)}") from exc
        step.status, step.seconds = "ok", time.perf_counter() - t0
    return steps


def reason(exc: BaseException) -> str:
    """One line saying why: a worker's own exception line when Ray wraps it, else the exception's first line."""
    import re

    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    worker = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b[^:]*:", ln)]
    return worker[-1] if worker else f"{type(exc).__name__}: {lines[0] if lines else ''}"


def restore_one(export: str, corpus: str, out: Path) -> Path:
    """Restore the first sample of ``corpus`` with ``export`` (the stage-3 joint of ``omnilv restore``)."""
    from pipelines import iter_samples
    from training.eval import Restorer, save_image

    sample = next(iter(iter_samples(corpus)))
    restored = Restorer.from_export(export).restore(sample.input, sample.instruction, sample.ref_input,
                                                    sample.ref_target, steps=2)
    return save_image(restored, out / "restored.png")


def describe(steps: list[Step]) -> list[dict[str, Any]]:
    return [{"step": s.name, "config": s.config, "inputs": s.inputs, "outputs": s.outputs, "loss": s.loss,
             "seconds": round(s.seconds, 1), "status": s.status} for s in steps]


def rehearse(out: Path, *, s3: str = "config", plan_only: bool = False, progress: bool = True) -> list[Step]:
    """Plan (and unless ``plan_only`` run) the rehearsal; prints the size overrides, the joints and the table."""
    steps = plan()
    print_plan(steps, s3 == "local")
    if plan_only:
        return steps
    if s3 != "local":
        return _run_and_report(steps, out, False, progress)
    from training.s3local import local_s3, make_buckets, seed_source_list

    with local_s3(out / "moto.log") as url:
        print(f"local S3 endpoint: {url} (moto_server; throwaway credentials)")
        corpora = [load_corpus_config(s.config) for s in steps if s.kind == "corpus"]
        stages = [load_train_config(s.config) for s in steps if s.kind == "train"]
        make_buckets([*(c.output.path for c in corpora), *(src.uri for c in corpora for src in c.sources),
                      *(t.run.storage_path for t in stages)])
        for src in {(s.uri, s.column) for c in corpora for s in c.sources if s.uri.endswith((".parquet", ".jsonl"))}:
            seed_source_list(*src)
        return _run_and_report(steps, out, True, progress)


def _run_and_report(steps: list[Step], out: Path, local: bool, progress: bool) -> list[Step]:
    try:
        run(steps, out, local, progress)
    finally:
        print_table(steps)
        (out / "rehearsal.json").write_text(json.dumps(describe(steps), indent=1))
    return steps


def print_plan(steps: list[Step], local: bool) -> None:
    from rich.console import Console

    console = Console()
    console.print("[bold]rehearsal of the production path[/bold] (configs as written; only these sizes change)")
    for s in steps:
        if s.kind == "corpus":
            over = corpus_overrides(load_corpus_config(s.config), local)
        elif s.kind == "train":
            over = stage_overrides(load_train_config(s.config))
        else:
            over = []
        console.print(f"  {s.name:<12} {s.config or s.kind:<18} {' '.join(over)}", soft_wrap=True)
    console.print("[bold]joints[/bold]")
    for s in steps:
        console.print(f"  {', '.join(s.inputs)}  ->  {s.name}  ->  {', '.join(s.outputs)}", soft_wrap=True)


def print_table(steps: list[Step]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rehearsal")
    for col in ("stage", "inputs", "outputs", "loss first -> last", "time", "status"):
        table.add_column(col, overflow="fold")
    for s in steps:
        loss = f"{s.loss[0]:.4f} -> {s.loss[1]:.4f}" if s.loss else ""
        table.add_row(s.name, "\n".join(s.inputs), "\n".join(s.outputs), loss, f"{s.seconds:.0f}s", s.status)
    Console(width=160).print(table)
