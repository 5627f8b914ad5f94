"""The training commands, registered on the root app: ``train``, ``quickstart``, ``cache-latents``, ``restore`` and
``eval``.

Only typer is imported at module level; Ray, torch and diffusers load inside the commands, so ``omnilv --help``
stays fast. Errors are the library's: a project error reaches the one boundary in ``omnilv/cli.py``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

import typer

from omnilv.options import Overrides, RayAddress

CONFIG_HELP = "A config file or a preset name (tiny_stage1, stage1_512, …)."
CHECKPOINT_HELP = ("An exported model folder or s3:// prefix (omnilv.json + backbone/ + our modules), e.g. "
                   "runs/tiny_stage1/export.")
DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:N or mps (default: cuda when this machine has it, else cpu)."


def register(app: typer.Typer) -> None:
    """Add ``train``, ``quickstart``, ``rehearse``, ``cache-latents``, ``restore``, ``eval`` and the ``lumen`` group
    to the root app."""
    from training.lumen_cli import app as lumen_app

    app.command("train")(train_command)
    app.command("quickstart")(quickstart_command)
    app.command("rehearse")(rehearse_command)
    app.command("cache-latents")(cache_latents_command)
    app.command("restore")(restore_command)
    app.command("eval")(eval_command)
    app.add_typer(lumen_app, name="lumen")


def train_command(
    config: str = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP),
    set_: Overrides = None,
    address: RayAddress = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config, print the DeepSpeed config and "
                                                          "exit."),
) -> None:
    """Train one stage with Ray Train + DeepSpeed ZeRO: OmniLV, or Lumen when the config says model.recipe: lumen.

    Resumes automatically from the run's latest complete checkpoint (same stage/run name and storage path); ends
    exactly at schedule.steps, then exports the model to RUN/export.

    Examples:

    ```
    omnilv train tiny_stage1 --set data.corpus=corpus/quickstart
    omnilv train stage1_512 --address ray://head:10001
    omnilv train my_configs/stage1.yaml --dry-run
    omnilv train tiny_lumen_stage1
    ```
    """
    import json

    from training.config import load_train_config
    from training.run import deepspeed_config, run_stage

    cfg = load_train_config(config, set_ or [])
    if dry_run:
        typer.echo(json.dumps(deepspeed_config(cfg), indent=1))
        return
    result = run_stage(cfg, address=address)
    m = result.metrics
    typer.echo(f"done: step {m.get('step')} loss {m.get('loss', float('nan')):.4f} in {result.seconds:.0f}s; "
               f"checkpoint {result.checkpoint}; export {result.export}")
    if result.skipped:
        typer.echo(f"skipped while reading: {result.skipped}")


def quickstart_command(
    out: Path = typer.Option(Path("quickstart-out"), "--out", help="Folder for the corpus, run, export and "
                                                                   "restored images."),
    set_: Overrides = None,
    address: RayAddress = None,
) -> None:
    """The embedded default, end to end on CPU in a few minutes, no downloads.

    Builds train and held-out corpora from the bundled photos (held-out photos are never trained on), trains the
    tiny pixel-space model with 2 Ray Train workers and DeepSpeed ZeRO-2, exports it, restores the held-out images
    and prints PSNR of the degraded input vs the restored output. Restored images (degraded | restored | clean) go
    to OUT/restored/. --set overrides fields of the training config.
    """
    from training.quickstart import run_quickstart

    report = run_quickstart(out, set_ or [], address=address)
    gain = report["table"]["overall"]["gain_db"]
    typer.echo(f"overall PSNR gain on held-out photos: {gain:+.2f} dB; model exported to {report['export']}")


def rehearse_command(
    out: Path = typer.Option(Path("rehearsal"), "--out", help="Folder for the restored image, the eval report, "
                                                               "rehearsal.json and the local S3 log."),
    s3: Literal["config", "local"] = typer.Option("config", "--s3", help="local: serve the configs' s3:// "
                                                  "buckets from an S3 endpoint on loopback that the command starts "
                                                  "(moto_server); config: use the S3 the environment points at."),
    plan_only: bool = typer.Option(False, "--plan-only", help="Print the joints and the size overrides; run "
                                                               "nothing."),
) -> None:
    """Rehearse the production path in miniature before spending GPU-hours on it.

    Runs the production configs as written (corpora production_40m and production_1024; stages stage1_512,
    stage2_incontext and stage3_1024), changing only a printed set of sizes: the tiny model and encoders, crops an
    eighth of the size, a few steps on 2 CPU workers. Every corpus path and every stage.init_from comes from the
    configs, so a joint that does not connect fails here, naming it. Ends with a table of every step (inputs,
    outputs, loss first -> last, time); exits 2 at the first joint that breaks.

    ```
    omnilv rehearse --plan-only
    omnilv rehearse --s3 local
    ```
    """
    from training.rehearse import rehearse

    steps = rehearse(out.absolute(), s3=s3, plan_only=plan_only)
    if not plan_only:
        typer.echo(f"rehearsal passed: {len(steps)} steps; details in {out.absolute() / 'rehearsal.json'}")


def cache_latents_command(
    config: str = typer.Argument(..., metavar="CONFIG", help=CONFIG_HELP + " Its codec, text, text_layer, "
                                 "data.corpus, data.resolution/buckets, data.use_exemplars and run.seed are used."),
    set_: Overrides = None,
    out: str = typer.Option(None, "--out", help="Cache folder or s3:// prefix (default: data.latents, else "
                                                "CORPUS-latents next to the corpus)."),
    address: RayAddress = None,
    actors: int = typer.Option(None, "--actors", help="Encoder actors (default: one per GPU with run.use_gpu, "
                                                      "else 1)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per VAE call."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete a cache already at --out and rebuild it."),
) -> None:
    """VAE-encode a corpus once into shards of latents + text features that training reads instead of pixels.

    Crops each sample like training would (centre, or seeded with data.random_crop), encodes input, target and
    exemplars with the config's codec and the instruction with its text encoder (frozen, one actor per GPU when
    run.use_gpu), and writes WebDataset shards of .npy arrays (never pickles), latents.json (codec, text encoder and
    layer, shapes, scaling, source manifest sha256) and manifest.json last.

    Training refuses a cache built with another codec, text encoder, text layer or crop size than its config. The
    crops are fixed once cached: every epoch sees the same crop of a sample.

    Examples:

    ```
    omnilv cache-latents tiny_stage1 --set data.corpus=corpus/quickstart --out corpus/latents
    omnilv train tiny_stage1 --set data.corpus=corpus/quickstart --set data.latents=corpus/latents
    omnilv cache-latents stage1_512 --out s3://bucket/latents/stage1 --address ray://head:10001
    ```
    """
    from pipelines import ConfigError
    from training.config import load_train_config
    from training.data import cache_latents

    cfg = load_train_config(config, set_ or [])
    if not cfg.data.corpus:
        raise ConfigError(f"{config}: data.corpus is empty; say which corpus to encode (--set data.corpus=…)")
    target = out or cfg.data.latents or f"{cfg.data.corpus.rstrip('/')}-latents"
    res = cache_latents(cfg.data.corpus, target, cfg.codec, cfg.text, sizes=cfg.data.sizes, text_layer=cfg.text_layer,
                        random_crop=cfg.data.random_crop, use_exemplars=cfg.data.use_exemplars,
                        batch_size=batch_size, num_gpus=1 if cfg.run.use_gpu else 0, concurrency=actors,
                        seed=cfg.run.seed, overwrite=overwrite, progress=True, address=address)
    typer.echo(f"done: {res.samples} samples in {res.shards} shards -> {res.root} in {res.seconds:.0f}s; "
               f"latents {res.meta['latent_shapes']}, text {res.meta['text_dim']}-d")
    if res.skipped:
        typer.echo(f"skipped while reading the corpus: {res.skipped}")
    overrides = " ".join(f"--set {shlex.quote(o)}" for o in set_ or ())
    typer.echo(f"train on it: omnilv train {config} {overrides} --set data.latents={res.root} "
               f"--set run.name={cfg.run_name}-latents".replace("  ", " "))  # its own run: not the pixel run's


def restore_command(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image to restore (PNG/JPEG/…, any size)."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Where to write the result (same size as IN)."),
    checkpoint: str = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    instruction: str = typer.Option(..., "--instruction", help="What to do, e.g. 'Remove the noise.'"),
    ref_input: Path | None = typer.Option(None, "--ref-input", help="Visual prompt: an exemplar input image; "
                                                                    "needs --ref-target."),
    ref_target: Path | None = typer.Option(None, "--ref-target", help="Visual prompt: that exemplar's target."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="ODE steps (default: the export's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Instruction guidance scale; 1 = none."),
    method: Literal["euler", "heun"] | None = typer.Option(None, "--method",
                                                           help="ODE solver (default: the export's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the starting noise."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Restore IN into OUT following an instruction (and optionally an exemplar pair).

    Example:

    ```
    omnilv restore --checkpoint runs/tiny_stage1/export --instruction "Remove the noise." noisy.png clean.png
    ```
    """
    from training.eval import Restorer, load_image, save_image

    if (ref_input is None) != (ref_target is None):
        raise typer.BadParameter("--ref-input and --ref-target go together (an exemplar is an input/target pair)")
    img = load_image(input_path)
    refs = (load_image(ref_input), load_image(ref_target)) if ref_input else (None, None)
    restorer = Restorer.from_export(checkpoint, device)
    out = restorer.restore(img, instruction, *refs, steps=steps, guidance=guidance, method=method, seed=seed)
    save_image(out, output_path)
    typer.echo(f"wrote {output_path} ({img.shape[1]}x{img.shape[0]})")


def eval_command(
    corpus: str = typer.Argument(..., metavar="CORPUS", help="Corpus folder or s3:// prefix (with manifest.json)."),
    checkpoint: str = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    out: Path = typer.Option(Path("omnilv-eval"), "--out", help="Report folder: results.json, index.html, sheet.png."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate at most this many samples."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="ODE steps (default: the export's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Instruction guidance scale; 1 = none."),
    seed: int = typer.Option(0, "--seed", help="Base seed of the starting noise (sample i uses seed+i)."),
    lpips: Path | None = typer.Option(None, "--lpips", help="Folder with local LPIPS weights: torchvision's AlexNet "
                                      "state dict (alexnet-owt-7be5be79.pth) and lpips' v0.1 alex.pth. Adds LPIPS "
                                      "per task; nothing is downloaded."),
    musiq: Path | None = typer.Option(None, "--musiq", help="A local MUSIQ checkpoint released with pyiqa "
                                      "(musiq_koniq_ckpt-e95806b9.pth, musiq_spaq_ckpt-358bb6af.pth, "
                                      "musiq_paq2piq_ckpt-364c0c84.pth or musiq_ava_ckpt-e8d3f067.pth), or the folder "
                                      "holding it. Adds MUSIQ, a no-reference quality score (higher is better), of "
                                      "restored and input per task; nothing is downloaded."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Score an exported model on a corpus: PSNR and SSIM (and LPIPS with --lpips, MUSIQ with --musiq) per task,
    restored vs target next to input vs target.

    Examples:

    ```
    omnilv eval --checkpoint runs/tiny_stage1/export corpus/quickstart --out eval --limit 50
    omnilv eval --checkpoint s3://bucket/runs/stage1/export s3://bucket/corpus --lpips ~/weights/lpips
    omnilv eval --checkpoint runs/tiny_stage1/export corpus/quickstart --musiq ~/weights/musiq
    ```
    """
    from rich.progress import Progress

    from training.eval import evaluate

    with Progress(transient=True) as bar:
        task = bar.add_task("restoring", total=limit)
        results = evaluate(checkpoint, corpus, out, limit=limit, steps=steps, guidance=guidance, seed=seed,
                           lpips=lpips, musiq=musiq, progress=lambda n: bar.advance(task, n), device=device)
    _print_table(results)
    typer.echo(f"report: {out / 'index.html'}")


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from training.eval import table_columns

    table = Table(title=f"{results['samples']} samples")
    cols = table_columns(results)
    for col, _ in cols:
        table.add_column(col)
    for name, m in results["tasks"].items():
        table.add_row(*(fmt(name, m) for _, fmt in cols))
    Console().print(table)
    if results["skipped"]:
        typer.echo(f"skipped: {results['skipped']}")
