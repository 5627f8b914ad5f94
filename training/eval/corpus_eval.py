"""Evaluate an exported OmniLV on a corpus: PSNR/SSIM per task, restored vs target and input vs target.

Writes ``results.json``, ``index.html`` and ``sheet.png`` (one row per task: input | restored | target).
The corpus is read through :func:`pipelines.read.iter_samples` (manifest-listed shards, whitelisted
members only). LPIPS is added when ``lpips`` names a folder of local weights (:mod:`training.eval.lpips`), and
MUSIQ, a no-reference quality score where higher is better, of the restored output and of the input when ``musiq``
names a local pyiqa checkpoint or its folder (:mod:`training.eval.musiq`).
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.eval.lpips import LPIPS
from training.eval.metrics import psnr, ssim
from training.eval.musiq import MUSIQ, PATCH
from training.eval.restore import Restorer, resolve_device, save_image

SHEET_CELL = 128  # pixels: each image of the sheet is fitted into a square this size


def evaluate(checkpoint: str | Path, corpus: str, out_dir: str | Path, *, limit: int | None = None,
             steps: int | None = None, guidance: float | None = None, seed: int = 0, lpips: str | Path | None = None,
             musiq: str | Path | None = None, progress: Callable[[int], None] | None = None,
             device: str | None = None) -> dict[str, Any]:
    """Restore up to ``limit`` corpus samples, score them, write the report; returns the results dict.

    The model runs on ``device`` (default: CUDA when present, else CPU); the metrics run on CPU."""
    from pipelines import ReadStats, iter_samples

    # Before the slow part: a device this machine lacks, or bad metric weights, fail fast.
    device = resolve_device(device)
    perceptual = LPIPS.from_folder(lpips) if lpips else None
    quality = MUSIQ.from_path(musiq) if musiq else None
    restorer = Restorer.from_export(checkpoint, device)
    stats, skipped = ReadStats(), Counter()
    scores: dict[str, list[dict[str, float]]] = defaultdict(list)
    examples: dict[str, tuple[list[np.ndarray | None], str]] = {}
    for i, sample in enumerate(iter_samples(corpus, stats)):
        if limit is not None and i >= limit:
            break
        task = str(sample.meta.get("task", "unknown"))
        if sample.target.shape != sample.input.shape:
            skipped["target size differs from input"] += 1
            continue
        out = restorer.restore(sample.input, sample.instruction, sample.ref_input, sample.ref_target,
                               steps=steps, guidance=guidance, seed=seed + i)
        row = {"psnr": psnr(out, sample.target), "ssim": ssim(out, sample.target),
               "psnr_input": psnr(sample.input, sample.target), "ssim_input": ssim(sample.input, sample.target)}
        if perceptual is not None and min(out.shape[:2]) >= 32:
            row.update(lpips=perceptual.distance(out, sample.target),
                       lpips_input=perceptual.distance(sample.input, sample.target))
        elif perceptual is not None:
            skipped["lpips: image under 32 px"] += 1
        if quality is not None and min(out.shape[:2]) >= PATCH:
            row.update(musiq=quality.score(out), musiq_input=quality.score(sample.input))
        elif quality is not None:
            skipped[f"musiq: image under {PATCH} px"] += 1
        scores[task].append(row)
        if task not in examples:
            caption = (f"{task}: PSNR input {row['psnr_input']:.2f} dB, restored {row['psnr']:.2f} dB  "
                       f"| {sample.instruction}")
            examples[task] = ([sample.input, out, sample.target, sample.ref_input, sample.ref_target], caption)
        if progress is not None:
            progress(1)
    results = summarize(scores)
    results.update(checkpoint=str(checkpoint), corpus=str(corpus), samples=sum(len(v) for v in scores.values()),
                   skipped={**dict(skipped), **dict(stats.skipped)}, sampler=restorer.meta.get("sampler", {}),
                   device=str(device))
    write_report(results, examples, Path(out_dir))
    return results


def summarize(scores: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Mean of each metric per task and over all samples; ``gain_psnr`` = restored − input."""
    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        keys = dict.fromkeys(k for r in rows for k in r)  # LPIPS and MUSIQ may be missing on some rows
        m = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
        return {**m, "n": len(rows), "gain_psnr": m["psnr"] - m["psnr_input"]}

    every = [r for rows in scores.values() for r in rows]
    return {"tasks": {t: mean(rows) for t, rows in sorted(scores.items())}, "overall": mean(every) if every else {}}


def write_report(results: dict[str, Any], examples: dict[str, tuple], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    if examples:
        save_image(sheet([examples[t] for t in sorted(examples)]) / 255.0, out / "sheet.png")
    (out / "index.html").write_text(_html(results, bool(examples)))


def sheet(rows: list[tuple[list[np.ndarray | None], str]]) -> np.ndarray:
    """One labelled row per task: input | restored | target (| exemplar pair, when a sample has one)."""
    from pipelines import labelled_sheet

    columns = ["input", "restored", "target"]
    if any(images[3] is not None for images, _ in rows):
        columns += ["exemplar input", "exemplar target"]
    return labelled_sheet([(images[: len(columns)], caption) for images, caption in rows], columns, SHEET_CELL)


def table_columns(results: dict[str, Any]) -> list[tuple[str, Callable[[str, dict], str]]]:
    """(header, cell formatter) of the per-task table, shared by the HTML report and the console.

    PSNR, SSIM and MUSIQ: higher is better; LPIPS: lower is better.
    """
    cols: list[tuple[str, Callable[[str, dict], str]]] = [
        ("task", lambda t, m: t), ("n", lambda t, m: str(m["n"])),
        ("PSNR restored", lambda t, m: f"{m['psnr']:.2f}"), ("PSNR input", lambda t, m: f"{m['psnr_input']:.2f}"),
        ("gain", lambda t, m: f"{m['gain_psnr']:+.2f}"), ("SSIM restored", lambda t, m: f"{m['ssim']:.4f}"),
        ("SSIM input", lambda t, m: f"{m['ssim_input']:.4f}")]
    if any("lpips" in m for m in results["tasks"].values()):
        cols += [("LPIPS restored", lambda t, m: f"{m['lpips']:.4f}" if "lpips" in m else "–"),
                 ("LPIPS input", lambda t, m: f"{m['lpips_input']:.4f}" if "lpips_input" in m else "–")]
    if any("musiq" in m for m in results["tasks"].values()):
        cols += [("MUSIQ restored", lambda t, m: f"{m['musiq']:.2f}" if "musiq" in m else "–"),
                 ("MUSIQ input", lambda t, m: f"{m['musiq_input']:.2f}" if "musiq_input" in m else "–")]
    return cols


def _html(results: dict[str, Any], sheet: bool) -> str:
    cols = table_columns(results)
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols) + "</tr>"
    rows = ["<tr>" + "".join(f"<td>{html.escape(fmt(t, m))}</td>" for _, fmt in cols) + "</tr>"
            for t, m in results["tasks"].items()]
    img = '<p>one example per task: input | restored | target</p><img src="sheet.png">' if sheet else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>omnilv eval</title></head><body>"
            f"<h1>omnilv eval</h1><p>checkpoint {html.escape(results['checkpoint'])}, corpus "
            f"{html.escape(results['corpus'])}, {results['samples']} samples</p>"
            f"<table border='1'>{head}{''.join(rows)}</table>{img}</body></html>")
