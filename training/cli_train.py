"""``omnilv train`` and ``omnilv quickstart`` (heavy imports stay inside the commands)."""

from __future__ import annotations

from pathlib import Path

import typer

SET_HELP = "Override a config field, e.g. --set optim.lr=3e-4 --set run.workers=4 (repeatable)."


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``quickstart`` to the root app."""
    app.command("train")(train)
    app.command("quickstart")(quickstart)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def train(config: Path = typer.Argument(..., help="Training config YAML, e.g. configs/train/tiny_stage1.yaml."),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP),
          address: str = typer.Option(None, "--address", help="Ray cluster address (default: $RAY_ADDRESS, "
                                                              "else a private local Ray)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Validate the config, print the DeepSpeed "
                                                                "config and exit.")) -> None:
    """Train one OmniLV stage with Ray Train + DeepSpeed ZeRO.

    Resumes automatically from the run's latest complete checkpoint (same stage/run name and
    storage path); ends exactly at schedule.steps, then exports the model to RUN/export.

    \b
    Examples:
      omnilv train configs/train/tiny_stage1.yaml --set data.corpus=corpus/quickstart
      omnilv train configs/train/stage1_512.yaml --address ray://head:10001
    """
    import json

    from pipelines.configfile import ConfigError
    from pipelines.schema import SchemaError
    from training.config import load_train_config
    from training.run.deepspeed_config import deepspeed_config

    try:
        cfg = load_train_config(config, set_)
    except ConfigError as exc:
        _fail(exc)
    if dry_run:
        typer.echo(json.dumps(deepspeed_config(cfg), indent=1))
        return
    from training.run import run_stage as run_train

    try:
        result = run_train(cfg, address=address)
    except (SchemaError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    m = result.metrics
    typer.echo(f"done: step {m.get('step')} loss {m.get('loss', float('nan')):.4f} in {result.seconds:.0f}s; "
               f"checkpoint {result.checkpoint}; export {result.export}")
    if result.skipped:
        typer.echo(f"skipped while reading: {result.skipped}")


def quickstart(out: Path = typer.Option(Path("quickstart-out"), "--out", help="Folder for the corpus, run, "
                                                                                 "export and restored images."),
               set_: list[str] = typer.Option([], "--set", help=SET_HELP + " (applies to the training config)"),
               address: str = typer.Option(None, "--address", help="Ray cluster address (default: local).")) -> None:
    """The embedded default, end to end on CPU in a few minutes, no downloads.

    Builds train and held-out corpora from the bundled photos (held-out photos are never trained
    on), trains the tiny pixel-space model with 2 Ray Train workers and DeepSpeed ZeRO-2, exports
    it, restores the held-out images and prints PSNR of the degraded input vs the restored output.
    Restored images (degraded | restored | clean) go to OUT/restored/.
    """
    from pipelines.configfile import ConfigError
    from training.quickstart import run_quickstart

    try:
        report = run_quickstart(out, list(set_), address=address)
    except ConfigError as exc:
        _fail(exc)
    gain = report["table"]["overall"]["gain_db"]
    typer.echo(f"overall PSNR gain on held-out photos: {gain:+.2f} dB; model exported to {report['export']}")
