"""``omnilv corpus``: build, inspect, preview and regenerate WebDataset corpora.

Heavy imports (Ray, OpenCV, the plugins) stay inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from omnilv.options import Overrides, RayAddress

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help=(
    "Build, inspect, preview and regenerate WebDataset corpora of (input, target, instruction) samples.\n\n"
    "Start with `omnilv corpus build` (the embedded quickstart: bundled photos, local disk), then "
    "`omnilv corpus inspect corpus/quickstart`."))


def _opts() -> dict:
    from pipelines.storage import s3_options

    return s3_options()


@app.command()
def build(
    config: str = typer.Argument(None, help="A corpus config file or a preset name (quickstart, omnilv_512, "
                                            "production_40m). Default: the embedded quickstart."),
    set_: Overrides = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete a corpus built from another config and "
                                                              "rebuild (default: refuse)."),
    address: RayAddress = None,
    workers: int = typer.Option(None, "--workers", min=1, help="Shard tasks in flight (default: all CPUs)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Build (or resume) a corpus: one Ray task per shard, manifest written last.

    Rerun the same command after a crash to resume: committed shards are skipped, and the result is
    byte-identical to an uninterrupted build, on any number of workers. report.json, report.html and
    per-domain contact sheets land beside manifest.json.

    Examples:

    ```
    omnilv corpus build
    omnilv corpus build omnilv_512 --set geometry.crop_size=128 --set output.path=s3://bucket/corpus
    ```
    """
    from pipelines.build import build_corpus
    from pipelines.config import load_corpus_config

    cfg = load_corpus_config(config, set_ or [])
    res = build_corpus(cfg, overwrite=overwrite, progress=not quiet, address=address, workers=workers)
    m = res.manifest
    typer.echo(f"{m.samples} samples in {len(m.shards)} shards at {res.root} "
               f"({res.built} built, {res.skipped} resumed, {res.seconds:.1f} s)")
    rejects = m.extra.get("rejects", {})
    if rejects:
        typer.echo("skipped sources: " + ", ".join(f"{k}={v}" for k, v in rejects.items()))
    typer.echo(f"report: {res.report_path}")


@app.command()
def inspect(path: str = typer.Argument(..., help="Corpus folder or s3:// prefix (holding manifest.json).")) -> None:
    """Verify every shard the manifest lists (sha256, bytes, sample counts) and print a summary; exit 1 when
    anything does not match."""
    from rich.console import Console
    from rich.table import Table

    from pipelines.inspect import inspect_corpus

    res = inspect_corpus(path, _opts())
    m = res.manifest
    typer.echo(f"{path}: {res.samples} samples, {len(m.shards)} shards, {res.bytes:,} bytes")
    table = Table()
    table.add_column("task")
    table.add_column("samples", justify="right")
    tasks: dict[str, int] = {}
    for s in m.shards:
        for k, v in s.tasks.items():
            tasks[k] = tasks.get(k, 0) + v
    for k, v in sorted(tasks.items()):
        table.add_row(k, str(v))
    console = Console()
    console.print(table)
    rejects = m.extra.get("rejects", {})
    if rejects:
        console.print("skipped at build: " + ", ".join(f"{k}={v}" for k, v in rejects.items()))
    if res.ok:
        console.print(f"[green]OK[/green]: every listed shard matches the manifest (config {m.config_sha256[:12]}…)")
        return
    for p in res.problems:
        console.print(f"[red]MISMATCH[/red] {p}")
    raise typer.Exit(1)


@app.command()
def preview(
    path: str = typer.Argument(..., help="Corpus folder or s3:// prefix."),
    out: Path = typer.Option(Path("corpus_preview.png"), "--out", help="Where to write the PNG contact sheet."),
    rows: int = typer.Option(8, "--rows", min=1, help="Samples to show."),
) -> None:
    """Write a contact sheet (input | target | instruction) of the first samples."""
    from itertools import islice

    from pipelines.read import iter_samples
    from pipelines.report import contact_sheet, encode_sheet

    samples = list(islice(iter_samples(path, storage_options=_opts()), rows))
    out.write_bytes(encode_sheet(contact_sheet(samples)))
    typer.echo(f"wrote {out} ({len(samples)} samples)")


@app.command()
def regenerate(
    path: str = typer.Argument(..., help="Corpus folder or s3:// prefix."),
    key: str = typer.Argument(..., help="Sample key (the part of a member name before the first dot)."),
) -> None:
    """Rebuild one sample from its json record and confirm it matches the stored images (exit 1 if not)."""
    from pipelines.regenerate import regenerate as regenerate_sample

    res = regenerate_sample(path, key, _opts())
    for member, same in res.checks.items():
        typer.echo(f"{key}.{member}: {'identical' if same else 'DIFFERENT'}")
    if not res.ok:
        raise typer.Exit(1)
    typer.echo(f"{key} (in {res.shard}) regenerates exactly from its json record")


@app.command("ls")
def list_command(
    path: str = typer.Argument(..., help="Corpus folder or s3:// prefix."),
    task: str = typer.Option(None, "--task", help="Only samples of this task."),
    limit: int = typer.Option(50, "--limit", min=0, help="Show at most this many (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """List the samples of a corpus: key, task, domain, whether it has an exemplar pair, and its shard.

    A key is what `omnilv corpus regenerate` and `omnilv corpus sample` take.
    """
    import json
    from dataclasses import asdict
    from itertools import islice

    from pipelines.listing import list_samples

    entries = (e for e in list_samples(path, _opts()) if task is None or e.task == task)
    shown = list(islice(entries, limit or None))
    if as_json:
        for e in shown:
            typer.echo(json.dumps(asdict(e), sort_keys=True))
        return
    rows = [("key", "task", "domain", "exemplar", "shard", "instruction")]
    rows += [(e.key, e.task, e.domain, "yes" if e.exemplar else "-", e.shard, e.instruction) for e in shown]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]  # whole keys and names, whatever the terminal
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    if limit and len(shown) == limit:
        typer.echo(f"(first {limit}; --limit 0 lists all)")


@app.command()
def sample(
    path: str = typer.Argument(..., help="Corpus folder or s3:// prefix."),
    key: str = typer.Argument(..., help="Sample key (see `omnilv corpus ls`)."),
    out: Path = typer.Option(Path("sample"), "--out", help="Folder to write the sample's files into."),
) -> None:
    """Write one sample's stored members as files: input.png, target.png, instruction.txt, sample.json (and the
    exemplar pair), e.g. to look at them or to try `omnilv restore` on the input.
    """
    from pipelines.listing import write_sample
    from pipelines.schema import INPUT, TXT

    written = write_sample(path, key, out, _opts())
    for p in written.values():
        typer.echo(f"wrote {p}")
    instruction = written[TXT].read_text(encoding="utf-8") if TXT in written else "…"
    typer.echo(f"try: omnilv restore --checkpoint EXPORT --instruction {json_quote(instruction)} "
               f"{written[INPUT]} restored.png")


def json_quote(text: str) -> str:
    """``text`` quoted for a POSIX shell."""
    import shlex

    return shlex.quote(text)
