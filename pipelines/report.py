"""Build report: ``report.json`` + ``report.html`` + one PNG contact sheet per domain, beside the manifest.

Unlike the manifest, the report holds run facts (throughput, times), so it is not
part of the byte-identical set.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any

import cv2
import numpy as np

from pipelines.config import CorpusConfig
from pipelines.schema import Manifest, Sample
from pipelines.storage import Store

REPORT_JSON, REPORT_HTML = "report.json", "report.html"


def contact_sheet(samples: list[Sample], cell: int = 160) -> np.ndarray:
    """One labelled row per sample (caption: task and instruction): input | target, and the exemplar pair when any
    sample of the sheet has one; an RGB uint8 image."""
    from pipelines.sheets import labelled_sheet

    columns = ["input", "target"]
    if any(s.ref_input is not None for s in samples):
        columns += ["exemplar input", "exemplar target"]
    rows = [([s.input, s.target, s.ref_input, s.ref_target][: len(columns)],
             f"[{s.meta.get('task', '?')}] {s.instruction}") for s in samples]
    return labelled_sheet(rows, columns, cell)


def encode_sheet(sheet: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(sheet[..., ::-1]))
    if not ok:
        raise OSError("could not encode the contact sheet")
    return buf.tobytes()


def samples_by_domain(store: Store, rows: int, domains: set[str], max_shards: int = 8) -> dict[str, list[Sample]]:
    """Up to ``rows`` samples per domain from the first manifest-listed shards (stops once all are full)."""
    from pipelines.read import iter_samples

    out: dict[str, list[Sample]] = {}
    if rows <= 0:
        return out
    for s in iter_samples(store.root, storage_options=store.options, limit_shards=max_shards):
        bucket = out.setdefault(str(s.meta.get("domain", "unknown")), [])
        if len(bucket) < rows:
            bucket.append(s)
        if all(len(out.get(d, ())) >= rows for d in domains):
            break
    return out


def write_report(store: Store, cfg: CorpusConfig, manifest: Manifest, records: list[dict[str, Any]],
                 stats: dict[str, Any]) -> str:
    """Write the report files; returns the path/URL of ``report.json``."""
    from pipelines.synth import get_task

    tasks: Counter = Counter()
    rejects: Counter = Counter()
    rejected: list[list[str]] = []
    no_exemplar: Counter = Counter()
    for r in records:
        tasks.update(r.get("tasks", {}))
        rejects.update(r.get("rejects", {}))
        rejected.extend(r.get("rejected", []))
        no_exemplar.update(r.get("no_exemplar", {}))
    domains: Counter = Counter()
    for name, n in tasks.items():
        domains[get_task(name).domain] += n
    built = stats.get("built_samples", 0)
    report = {
        "name": cfg.name, "root": store.root, "samples": manifest.samples, "shards": len(manifest.shards),
        "bytes": sum(s.bytes for s in manifest.shards), "tasks": dict(sorted(tasks.items())),
        "domains": dict(sorted(domains.items())), "rejects": dict(sorted(rejects.items())), "rejected": rejected,
        "no_exemplar": dict(sorted(no_exemplar.items())),
        "seconds": round(stats.get("seconds", 0.0), 3), "built_samples": built,
        "samples_per_s": round(built / stats["seconds"], 3) if stats.get("seconds") else 0.0,
        "resumed_shards": stats.get("resumed_shards", 0), "built_shards": stats.get("built_shards", 0),
        "task_seconds": round(stats.get("task_seconds", 0.0), 3),
        "config_sha256": manifest.config_sha256, "contact_sheets": {},
    }
    report["shares"] = shares(manifest.extra.get("mixture", []), tasks, domains)
    for domain, samples in sorted(samples_by_domain(store, cfg.runtime.contact_sheet_rows, set(domains)).items()):
        name = f"contact_{domain}.png"
        store.write(name, encode_sheet(contact_sheet(samples)))
        report["contact_sheets"][domain] = name
    store.write(REPORT_JSON, json.dumps(report, indent=1, sort_keys=True).encode())
    store.write(REPORT_HTML, render_html(report).encode("utf-8"))
    return store.url(REPORT_JSON)


def shares(mixture: list, tasks: Counter, domains: Counter) -> dict[str, dict[str, dict[str, float]]]:
    """Requested (from the resolved mixture) and realised (counted) shares, per task and per domain."""
    from pipelines.synth import get_task

    total_w = sum(float(w) for _, w in mixture) or 1.0
    req_task = {str(n): float(w) / total_w for n, w in mixture}
    req_domain: Counter = Counter()
    for n, s in req_task.items():
        req_domain[get_task(n).domain] += s
    n_all = sum(tasks.values()) or 1

    def table(req: dict, got: Counter) -> dict[str, dict[str, float]]:
        return {k: {"requested": round(req.get(k, 0.0), 4), "realised": round(got.get(k, 0) / n_all, 4)}
                for k in sorted(set(req) | set(got))}

    return {"tasks": table(req_task, tasks), "domains": table(dict(req_domain), domains)}


def render_html(r: dict[str, Any]) -> str:
    def table(title: str, counts: dict[str, int]) -> str:
        body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v}</td></tr>" for k, v in counts.items())
        return f"<h2>{title}</h2><table><tr><th>name</th><th>count</th></tr>{body or '<tr><td>none</td></tr>'}</table>"

    def share_table(title: str, rows: dict[str, dict[str, float]]) -> str:
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['requested']:.1%}</td><td>{v['realised']:.1%}</td></tr>"
                       for k, v in rows.items())
        return f"<h2>{title}</h2><table><tr><th>name</th><th>requested</th><th>realised</th></tr>{body}</table>"

    sheets = "".join(f"<h3>{html.escape(d)}</h3><img src='{html.escape(n)}'>" for d, n in r["contact_sheets"].items())
    skipped = "".join(f"<li>{html.escape(u)}: {html.escape(why)}</li>" for u, why in r["rejected"][:200])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(r['name'])} corpus report"
            "</title><style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}</style></head><body>"
            f"<h1>{html.escape(r['name'])}: {r['samples']} samples in {r['shards']} shards ({r['bytes']:,} bytes)</h1>"
            f"<p>{r['built_samples']} samples built in {r['seconds']} s ({r['samples_per_s']} samples/s over the whole "
            "build, Ray's start-up included; the progress bar shows the rate of the shard tasks); "
            f"{r['resumed_shards']} shards resumed. Config sha256 {r['config_sha256']}.</p>"
            f"{share_table('Domains: share of samples', r['shares']['domains'])}"
            f"{table('Tasks', r['tasks'])}{table('Domains', r['domains'])}{table('Rejects by reason', r['rejects'])}"
            f"{table('Samples that drew an exemplar but went without one, by reason', r['no_exemplar'])}"
            f"<h2>Skipped sources and samples</h2><ul>{skipped or '<li>none</li>'}</ul>"
            f"<h2>Samples per domain</h2>{sheets}"
            "</body></html>")
