"""Commands of this package (mounted by ``omnilv.cli``); heavy imports stay inside commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                  help="The degradation / task plugin library: list, preview, check.")


def _describe(name: str) -> dict:
    from degradations import registry

    entry = registry.entries()[name]
    cls = registry.get(name)
    plugin = cls()
    return {"name": name, "domain": cls.domain, "class": entry.target, "source": entry.source,
            "changes_size": cls.changes_size, "target_bits": cls.target_bits, "requires": list(cls.requires),
            "params": {k: list(v) for k, v in plugin.ranges().items()}}


@app.command("list")
def list_plugins(
    domain: str = typer.Option(None, help="Only plugins of this domain (restoration, enhancement, dense, "
                                          "stylization)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """List every registered plugin (built-in or third-party) with its domain and parameter ranges.

    Plugins come from the `omnilv.degradations` entry-point group; chain presets (e.g. realesrgan) from
    `omnilv.chains` and are listed at the end.
    """
    from degradations import registry

    rows = [_describe(n) for n in registry.names()]
    if domain:
        rows = [r for r in rows if r["domain"] == domain]
    chains = registry.names(registry.CHAIN_GROUP)
    if as_json:
        typer.echo(json.dumps({"plugins": rows, "chains": chains}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} plugins")
    for col in ("name", "domain"):
        table.add_column(col, no_wrap=True)  # a name is what the user types: never cut or folded
    for col in ("parameters", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        params = "\n".join(f"{k} = ({', '.join(_short(x) for x in v)})" for k, v in r["params"].items())
        table.add_row(r["name"], r["domain"], params or "(parameterless)", r["source"])
    console = Console(width=max(Console().width, 120))  # piped output gets 120 columns, not rich's 80
    console.print(table)
    console.print(f"chain presets: {', '.join(chains) or '(none)'}")


def _short(value: object) -> str:
    """A range bound as a person reads it: 4 significant digits for floats."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
def preview(
    names: list[str] = typer.Argument(..., help="Plugin names or chain presets, e.g. `gaussian_noise realesrgan`."),
    out: Path = typer.Option(Path("sheet.png"), "--out", "-o", help="Where to write the contact sheet (.png)."),
    image: Path = typer.Option(None, "--image", "-i", help="Clean image to degrade (default: a bundled "
                                                           "scikit-image photo, the astronaut)."),
    draws: int = typer.Option(4, min=1, max=16, help="Random draws per plugin (one column each)."),
    seed: int = typer.Option(0, help="Seed of the draws; the same seed gives the same sheet."),
    cell: int = typer.Option(256, min=64, max=1024, help="Tile size in pixels."),
) -> None:
    """Write a labelled contact sheet: one row per plugin, the clean image then several random draws.

    Under each draw: the instruction and the sampled params. This is what a plugin author looks at to see
    that a plugin does what its name says across its ranges.
    """
    import numpy as np
    from rich.progress import track

    from degradations import registry
    from degradations.preview import contact_sheet, save_sheet
    from degradations.samples import default_image, load_rgb

    img = load_rgb(image) if image else default_image()
    known = set(registry.names()) | set(registry.names(registry.CHAIN_GROUP))
    for n in names:
        if n not in known:
            registry.get(n)  # raises with close-match suggestions
    parts = [contact_sheet([n], img, draws=draws, seed=seed, cell=cell) for n in track(names, description="rendering")]
    path = save_sheet(np.concatenate(parts, axis=0), out)
    typer.echo(f"wrote {path} ({len(names)} rows x {draws + 1} columns)")


@app.command()
def check(
    targets: list[str] = typer.Argument(..., help="`module:Class` (need not be registered) or registered names."),
    full_size: bool = typer.Option(False, "--full-size", help="Also run each plugin once at 512x512 and "
                                                              "1024x1024."),
    show_all: bool = typer.Option(False, "--all", help="List passing checks too, not only failures."),
) -> None:
    """Run the plugin contract on plugins and print a pass/fail table; exit code 1 when any check fails.

    The checks: instantiable with defaults; declares ranges/choices (or parameterless = True); at least 3
    instruction templates that render; params survive JSON; deterministic; apply ignores instance ranges; output
    is (H, W, 3) float32 in [0, 1] and the input is untouched; every range extreme and choice; no global RNG; a
    small odd-sized image.
    """
    from rich.console import Console
    from rich.table import Table

    from degradations.check import run_checks

    sizes = (512, 1024) if full_size else ()
    console = Console()
    failed = 0
    for target in targets:
        results = run_checks(target, sizes)
        bad = [r for r in results if not r.ok]
        failed += len(bad)
        table = Table(title=f"{target}: {len(results) - len(bad)}/{len(results)} checks pass")
        table.add_column("check")
        table.add_column("result")
        table.add_column("what was wrong", overflow="fold")
        for r in results if show_all or not bad else bad:
            table.add_row(r.check, "[green]pass[/]" if r.ok else "[red]FAIL[/]", r.message)
        console.print(table)
    if failed:
        console.print(f"[red]{failed} check(s) failed[/]")
        raise typer.Exit(1)
