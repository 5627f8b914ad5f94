"""``omnilv restore`` and ``omnilv eval``: use an exported model (see :mod:`training.model.export`).

Only typer is imported at module level; torch/diffusers load inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

CHECKPOINT_HELP = ("An exported model folder or s3:// prefix (omnilv.json + backbone/ + our modules), e.g. "
                   "runs/tiny_stage1/export.")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def restore(
    input_path: Path = typer.Argument(..., metavar="IN", help="Image to restore (PNG/JPEG/…, any size)."),
    output_path: Path = typer.Argument(..., metavar="OUT", help="Where to write the result (same size as IN)."),
    checkpoint: str = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    instruction: str = typer.Option(..., "--instruction", help="What to do, e.g. 'Remove the noise.'"),
    ref_input: Path | None = typer.Option(None, "--ref-input", help="Visual prompt: an exemplar input image."),
    ref_target: Path | None = typer.Option(None, "--ref-target", help="Visual prompt: that exemplar's target."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="ODE steps (default: the export's)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Instruction guidance scale; 1 = none."),
    method: str | None = typer.Option(None, "--method", help="euler or heun (default: the export's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the starting noise."),
) -> None:
    """Restore IN into OUT following an instruction (and optionally an exemplar pair).

    Example: omnilv restore --checkpoint runs/tiny/export --instruction "Remove the noise." noisy.png clean.png
    """
    from training.eval.restore import ImageFileError, Restorer, load_image, save_image
    from training.model.export import ExportError

    if (ref_input is None) != (ref_target is None):
        _fail("--ref-input and --ref-target go together (an exemplar is an input/target pair)")
    if method not in (None, "euler", "heun"):
        _fail(f"--method must be euler or heun, got {method!r}")
    try:
        img = load_image(input_path)
        refs = (load_image(ref_input), load_image(ref_target)) if ref_input else (None, None)
        restorer = Restorer.from_export(checkpoint)
        out = restorer.restore(img, instruction, *refs, steps=steps, guidance=guidance, method=method, seed=seed)
        save_image(out, output_path)
    except (ImageFileError, ExportError, OSError) as exc:  # OSError: an unreadable or missing s3:// export
        _fail(str(exc))
    except ValueError as exc:  # bad specs in omnilv.json, mismatched sizes: say so, no traceback
        _fail(f"{checkpoint}: {exc}")
    typer.echo(f"wrote {output_path} ({img.shape[1]}x{img.shape[0]})")


def evaluate(
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
) -> None:
    """Score an exported model on a corpus: PSNR and SSIM (and LPIPS with --lpips, MUSIQ with --musiq) per task,
    restored vs target next to input vs target.

    \b
    Examples:
      omnilv eval --checkpoint runs/tiny_stage1/export corpus/quickstart --out eval --limit 50
      omnilv eval --checkpoint s3://bucket/runs/stage1/export s3://bucket/corpus --lpips ~/weights/lpips
      omnilv eval --checkpoint runs/tiny_stage1/export corpus/quickstart --musiq ~/weights/musiq_koniq_ckpt-e95806b9.pth
    """
    from rich.progress import Progress

    from pipelines.schema import SchemaError
    from training.eval.evaluate import evaluate as run_eval
    from training.eval.lpips import LpipsError
    from training.eval.musiq import MusiqError
    from training.model.export import ExportError

    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("restoring", total=limit)
            results = run_eval(checkpoint, corpus, out, limit=limit, steps=steps, guidance=guidance, seed=seed,
                               lpips=lpips, musiq=musiq, progress=lambda n: bar.advance(task, n))
    except (ExportError, SchemaError, LpipsError, MusiqError, OSError) as exc:
        _fail(str(exc))
    _print_table(results)
    typer.echo(f"report: {out / 'index.html'}")


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from training.eval.evaluate import table_columns

    table = Table(title=f"{results['samples']} samples")
    cols = table_columns(results)
    for col, _ in cols:
        table.add_column(col)
    for name, m in results["tasks"].items():
        table.add_row(*(fmt(name, m) for _, fmt in cols))
    Console().print(table)
    if results["skipped"]:
        typer.echo(f"skipped: {results['skipped']}")


def register(app: typer.Typer) -> None:
    """Add ``restore`` and ``eval`` to the root app."""
    app.command("restore")(restore)
    app.command("eval")(evaluate)
