"""Human-readable output of ``omnilv cluster plan`` (rich tables); the numbers come from :mod:`cluster.plan`."""

from __future__ import annotations

import json

from cluster.plan import Plan


def _si(x: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {suffix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _bytes(n: float) -> str:
    for div, suffix in ((2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n:.0f} B"


def show(plan: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(110, Console().width))  # the training table needs ~100 columns
    i, c, s3 = plan.inputs, plan.corpus, plan.s3
    con.print(f"[bold]Plan: {i['pairs']:,} pairs at {i['resolution']}², {i['nodes']} nodes × {i['gpus_per_node']} "
              f"GPUs ({i['gpus']} GPUs), {c['build_cores']} build cores[/bold]")
    con.print("[bold]Measured inputs[/bold]")
    for name, src in plan.sources.items():
        values = {k: v for k, v in src.items() if k != "path"}
        con.print(f"  {name}: {src['path']}\n    {json.dumps(values)}")

    t = Table(title="Corpus build", show_header=False)
    rows = [("bytes / sample", f"{_bytes(c['bytes_per_sample'])} (bench per image × {c['pixel_scale']:g} pixel scale × "
                                         f"{c['images_per_sample']:g} images)"),
            ("samples / s / core", f"{c['samples_per_s_per_core']:.4g}"),
            ("shards", f"{c['shards']:,} × {c['samples_per_shard']} samples ({_bytes(c['shard_bytes'])} each)"),
            ("storage", _bytes(c["storage_bytes"])),
            ("CPU core-hours", f"{c['cpu_core_hours']:,.0f}"),
            ("wall-clock", f"{c['build_wall_hours']:,.2f} h on {c['build_cores']} cores")]
    for row in rows:
        t.add_row(*row)
    con.print(t)

    t = Table(title="S3 request rates")
    t.add_column("phase")
    t.add_column("rate", justify="right")
    t.add_column("how")
    t.add_row("build PUTs", f"{s3['build_puts_per_s']:.3g}/s",
              f"{s3['build_shards_per_s']:.3g} shards/s × {s3['puts_per_shard']} PUTs (parts + commit record)")
    for st in plan.stages:
        t.add_row(f"{st['name']} GETs", f"{st['s3_gets_per_s']:.3g}/s",
                  f"{st['cluster_samples_per_s']:.4g} samples/s ÷ {c['samples_per_shard']} × "
                  f"{s3['parts_per_shard']} ranged GETs/shard")
    con.print(t)

    t = Table(title="Training")
    for col in ("stage", "res", "steps", "samples", "epochs", "FLOPs/sample", "GPU-hours", "wall", "basis"):
        t.add_column(col, justify="left" if col in ("stage", "basis") else "right")
    for st in plan.stages:
        t.add_row(st["name"], str(st["resolution"]), _si(st["steps"]), _si(st["samples"]), f"{st['epochs']:.2f}",
                  _si(st["flops_per_sample"]), f"{st['gpu_hours']:,.0f}", f"{st['wall_hours']:,.1f} h",
                  "estimate" if st["method"].startswith("ESTIMATE") else "measured")
    total = sum(st["gpu_hours"] for st in plan.stages)
    t.add_row("total", "", "", "", "", "", f"{total:,.0f}", f"{total / i['gpus']:,.1f} h", "")
    con.print(t)
    for st in plan.stages:
        if st.get("ingest_cores_per_gpu") is not None:
            con.print(f"ingest CPU cores per GPU, {st['name']} ({st['resolution']}²): "
                      f"{st['ingest_cores_per_gpu']:.3g} ({1 / st['gpu_s_per_sample']:.3g} samples/s per GPU ÷ "
                      f"{st['ingest_samples_per_s_per_core']:.3g} ingest samples/s per core)")
        if st.get("activation_bytes_per_gpu") is not None:
            mem = st["activation_bytes_per_gpu"]
            con.print(f"activation memory per GPU, {st['name']} ({st['tokens']:,} tokens × "
                      f"{st['samples_per_gpu_step']:g} samples): "
                      f"{_bytes(mem['without_checkpointing'])} without checkpointing, "
                      f"{_bytes(mem['with_checkpointing'])} with (float32 as measured; bf16 halves it)")
    for lm in plan.lumen:
        con.print(f"Lumen {lm['name']} ({lm['part']}, LLaVA-1.5-7B frozen, forward only): {_si(lm['steps'])} steps, "
                  f"{_si(lm['samples'])} samples × {_si(lm['flops_per_sample'])}FLOPs = "
                  f"{lm['gpu_hours']:,.0f} GPU-hours, "
                  f"{lm['wall_hours']:,.1f} h wall (ESTIMATE at {i.get('peak_tflops', 0):g} TFLOP/s × MFU "
                  f"{i.get('mfu', 0):g})")
    for method in dict.fromkeys(st["method"] for st in plan.stages):
        con.print(f"GPU time basis: {method}")
    for note in plan.notes:
        con.print(f"[yellow]note:[/yellow] {note}")
