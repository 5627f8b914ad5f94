"""``omnilv quickstart``: the embedded default end to end on one CPU machine, no downloads.

1. builds two corpora from the photographs scikit-image ships, split by *source* (held-out photos
   never appear in training): Gaussian, speckle and salt-and-pepper denoising, small crops;
2. trains the tiny pixel-space OmniLV with Ray Train + DeepSpeed ZeRO-2 (configs/train/quickstart.yaml);
3. exports it, restores every held-out sample and prints PSNR(degraded, clean) vs PSNR(restored, clean).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig, load_train_config

TASKS = ("gaussian_noise", "speckle_noise", "salt_pepper_noise")
ZOOM = 4  # the 32-pixel crops are too small to judge by eye
HELD_OUT_EVERY = 6  # every 6th bundled photo (sorted by name) is held out: 3 of 19


@dataclass
class Row:
    task: str
    psnr_in: float
    psnr_out: float


def split_sources() -> tuple[list[str], list[str]]:
    """(train, held-out) ``samples://`` URIs: a fixed split by sorted name, so no photo is in both."""
    from degradations import sample_paths

    names = sorted(p.name for p in sample_paths())
    held = [n for i, n in enumerate(names) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [f"samples://{n}" for n in names if n not in held], [f"samples://{n}" for n in held]


def build_corpora(out: Path, variants: int, crop: int, progress: bool = True) -> tuple[str, str]:
    """Train and held-out corpora under ``out`` with the corpus builder; returns their roots."""
    from pipelines import build_corpus, load_corpus_config

    roots = []
    for name, uris, n in zip(("train", "heldout"), split_sources(), (variants, 8), strict=True):
        listing = out / f"{name}-sources.jsonl"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
        tasks = "{" + ", ".join(f"{t}: 1.0" for t in TASKS) + "}"
        cfg = load_corpus_config(None, [
            f"name=quickstart-{name}", f"sources=[{{uri: {listing}}}]", f"variants_per_source={n}",
            f"geometry.crop_size={crop}", f"geometry.resize_short={crop * 3}", f"mixture.tasks={tasks}",
            "mixture.default_weight=0", "mixture.exemplar_probability=0", f"output.path={out / name}",
            "output.samples_per_shard=64"])
        roots.append(build_corpus(cfg, overwrite=True, progress=progress).root)
    return roots[0], roots[1]


def quick_config(corpus: str, out: Path, overrides: list[str]) -> TrainConfig:
    return load_train_config("quickstart",
                             [f"data.corpus={corpus}", f"run.storage_path={out / 'runs'}", *overrides])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def evaluate(export: str, heldout: str, out: Path, steps: int = 2) -> list[Row]:
    """Restore every held-out sample; writes labelled PNGs (degraded | restored | clean, with task and PSNR) under
    ``out``, one per sample and all of them in ``sheet.png``, enlarged ×:data:`ZOOM` (nearest neighbour)."""
    import torch

    from pipelines import encode_png, iter_samples, labelled_sheet
    from training.eval import Restorer

    torch.manual_seed(0)
    restorer = Restorer.from_export(export)
    rows, strips, out = [], [], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns, cell = ("degraded input", "restored", "clean target"), 32 * ZOOM
    for i, s in enumerate(iter_samples(heldout)):
        restored = restorer.restore(s.input, s.instruction, steps=steps, seed=i)
        task = str(s.meta.get("task", "?"))
        rows.append(Row(task, psnr(s.input, s.target), psnr(restored, s.target)))
        strip = ([s.input, restored, s.target], f"{task}: PSNR {rows[-1].psnr_in:.2f} -> {rows[-1].psnr_out:.2f} dB")
        (out / f"{i:02d}_{task}.png").write_bytes(encode_png(labelled_sheet([strip], columns, cell) / 255.0))
        strips.append(strip)
    if strips:
        (out / "sheet.png").write_bytes(encode_png(labelled_sheet(strips, columns, cell) / 255.0))
    return rows


def summary(rows: list[Row]) -> dict[str, dict[str, Any]]:
    by: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by[r.task].append(r)
    by = {**dict(sorted(by.items())), "overall": list(rows)}  # overall last in the table
    return {t: {"n": len(rs), "psnr_degraded": float(np.mean([r.psnr_in for r in rs])),
                "psnr_restored": float(np.mean([r.psnr_out for r in rs])),
                "gain_db": float(np.mean([r.psnr_out - r.psnr_in for r in rs]))} for t, rs in by.items()}


def print_table(table: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="held-out restoration (PSNR, dB; photos never seen in training)")
    for col in ("task", "n", "degraded input", "restored", "gain"):
        t.add_column(col, justify="right" if col != "task" else "left")
    for task, r in table.items():
        style = "bold" if task == "overall" else None
        t.add_row(task, str(r["n"]), f"{r['psnr_degraded']:.2f}", f"{r['psnr_restored']:.2f}",
                  f"{r['gain_db']:+.2f}", style=style)
    Console().print(t)


def run_quickstart(out: Path, overrides: list[str] = (), address: str | None = None, progress: bool = True,
                   variants: int = 64, crop: int = 32) -> dict[str, Any]:
    """The whole quickstart; returns the PSNR table (also written to ``out/quickstart.json``)."""
    from pipelines import ensure_ray
    from training.run import run_stage

    out = Path(out).resolve()
    ensure_ray(address)
    train_root, held_root = build_corpora(out / "corpus", variants, crop, progress)
    cfg = quick_config(train_root, out, list(overrides))
    # Nothing is deleted: a rerun with the same settings resumes its finished run (re-exported, evaluated again);
    # one with other --set values is refused by the run record, naming the fields.
    result = run_stage(cfg, progress=progress)
    # Two Euler steps: close to the posterior mean (what PSNR rewards) yet past the one-step blur.
    table = summary(evaluate(result.export, held_root, out / "restored", steps=2))
    report = {"table": table, "train": {"steps": result.metrics.get("step"), "loss": result.metrics.get("loss"),
                                        "seconds": result.seconds, "skipped": result.skipped},
              "export": result.export}
    (out / "quickstart.json").write_text(json.dumps(report, indent=1))
    print_table(table)
    return report
