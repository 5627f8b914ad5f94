"""``omnilv cluster``: submit jobs to a Ray cluster, plan a run's size, render and check cluster configs.

Mounted by ``omnilv.cli``; imports only typer at module level (Ray's client, yaml and rich load inside commands).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from omnilv.options import JobsAddress

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                  help="Submit jobs to Ray clusters, plan and render cluster configs.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    command: list[str] = typer.Argument(None, metavar="-- COMMAND...",
                                        help="What to run on the cluster, after `--`, e.g. -- omnilv train CONFIG"),
    address: JobsAddress = None,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stream the logs and exit with the job's status."),
    working_dir: str | None = typer.Option(None, "--working-dir",
                                              help="Upload this folder as the job's cwd (e.g. . for configs/)."),
    env: list[str] = typer.Option([], "--env", help="Extra environment variable NAME=VALUE (repeatable)."),
    aws_env: bool = typer.Option(True, "--aws-env/--no-aws-env",
                                 help="Pass AWS_* S3 variables set in your shell to the job (by name)."),
    entrypoint_cpus: float | None = typer.Option(None, "--entrypoint-cpus",
                                                    help="CPUs reserved for the job's driver process."),
) -> None:
    """Run an omnilv command on a Ray cluster through the Ray Jobs API and follow it.

    The exit code is 0 when the job succeeded, the job's own exit code (or 1) when it failed, and 2 when it was
    stopped. Ctrl-C stops following; the job keeps running.

    Example:

    ```
    omnilv cluster submit --address http://127.0.0.1:8265 --working-dir . -- omnilv train stage1_512
    ```
    """
    from cluster import submit as sub

    req = sub.SubmitRequest(address=address or "", command=list(command or []), working_dir=working_dir,
                            env=sub.parse_env(env), pass_aws_env=aws_env, entrypoint_num_cpus=entrypoint_cpus)
    client, job_id = sub.submit(req, echo=typer.echo)
    base = sub.normalize_address(address)
    if not wait:
        typer.echo("follow it: " + sub.ray_cli_hint(client, f"ray job logs --address {base} --follow {job_id}"))
        raise typer.Exit(0)
    try:
        result = sub.follow(client, job_id, write=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following {job_id}; it is still running. Stop it with: "
                   + sub.ray_cli_hint(client, f"ray job stop --address {base} {job_id}"), err=True)
        raise typer.Exit(130) from None
    color = typer.colors.GREEN if result.exit_code == 0 else typer.colors.RED
    typer.secho(f"job {job_id} {result.status} (exit code {result.exit_code})", fg=color, err=True)
    if result.exit_code and result.message:
        typer.echo(result.message.splitlines()[0], err=True)
    raise typer.Exit(result.exit_code)


@app.command()
def plan(
    pairs: str = typer.Option("40M", "--pairs", help="Training pairs in the corpus (40M, 1.5B, 500k, …)."),
    resolution: int = typer.Option(512, "--resolution", help="Side of the corpus crops, in pixels."),
    nodes: int = typer.Option(4, "--nodes", help="GPU nodes of the training cluster."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    cpus_per_node: int = typer.Option(96, "--cpus-per-node", help="vCPUs per GPU node (they also build)."),
    cpu_nodes: int = typer.Option(0, "--cpu-nodes", help="Extra CPU-only nodes for the corpus build."),
    cpus_per_cpu_node: int = typer.Option(96, "--cpus-per-cpu-node"),
    samples_per_shard: int = typer.Option(256, "--samples-per-shard",
                                          help="Samples per shard (configs/corpus/production_40m.yaml: 256)."),
    part_mb: float = typer.Option(50.0, "--part-mb", help="S3 multipart part / ranged-GET size in MiB (s3fs: 50)."),
    steps: str = typer.Option("100k,100k,10k", "--steps", help="Steps of stage 1, 2, 3 (paper: 100k, 100k, +FT)."),
    global_batch: int = typer.Option(256, "--global-batch", help="Samples per optimizer step, all GPUs together."),
    peak_tflops: float = typer.Option(312.0, "--peak-tflops", help="GPU peak for estimates (A100 bf16: 312)."),
    mfu: float = typer.Option(0.40, "--mfu", help="Assumed model-FLOPs utilization for estimates."),
    corpus: str = typer.Option(None, "--corpus", help="A corpus config (file or preset name, e.g. production_40m): "
                               "its crop size, exemplar probability, samples per shard and PNG level size the "
                               "samples instead of --resolution/--samples-per-shard."),
    bench_dir: Path = typer.Option(None, "--bench-dir", help="Folder with corpus_build.json and train_step.json "
                                   "(default: the figures measured for this release, shipped with it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Size a run: shards, storage, build CPU-hours, S3 request rates, GPU-hours per stage, wall-clock.

    Every rate comes from the benchmark results in --bench-dir (shown in the output); device peak and
    MFU are used only when no GPU was measured, and the output says so.
    """
    from cluster import plan as pl

    shape = pl.corpus_shape(corpus) if corpus else {}
    resolution = shape.get("resolution", resolution)
    samples_per_shard = shape.get("samples_per_shard", samples_per_shard)
    inputs = pl.PlanInputs(pairs=pl.parse_count(pairs), resolution=resolution, nodes=nodes,
                           gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node, cpu_nodes=cpu_nodes,
                           cpus_per_cpu_node=cpus_per_cpu_node, samples_per_shard=samples_per_shard,
                           part_mb=part_mb, steps=pl.parse_steps(steps), global_batch=global_batch,
                           peak_tflops=peak_tflops, mfu=mfu,
                           exemplar_probability=shape.get("exemplar_probability", 0.0),
                           png_level=shape.get("png_level"))
    if min(resolution, samples_per_shard, global_batch, cpus_per_node) < 1 or part_mb <= 0 or not 0 < mfu <= 1:
        raise pl.PlanError("--resolution, --samples-per-shard, --global-batch, --cpus-per-node and --part-mb "
                           "must be positive and --mfu in (0, 1]")
    result = pl.make_plan(inputs, bench_dir)
    if as_json:
        typer.echo(result.to_json())
    else:
        from cluster.plan_view import show

        show(result)


@app.command()
def render(
    target: str = typer.Argument(..., help="aws | gcp | kuberay"),
    nodes: int = typer.Option(4, "--nodes", help="GPU worker nodes (pods for kuberay)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    cpu_workers: int = typer.Option(4, "--cpu-workers", help="CPU nodes for corpus builds (max, autoscaled)."),
    job: str = typer.Option("raycluster", "--job",
                            help="kuberay only: raycluster, or a RayJob: corpus-build, stage1, stage2, stage3, "
                                 "lumen-stage1, lumen-stage2."),
    image: str | None = typer.Option(None, "--image", help="Container image (default: Ray's / omnilv:VERSION)."),
    s3_prefix: str = typer.Option("s3://omnilv-corpora", "--s3-prefix",
                                  help="kuberay RayJobs: where the corpus is built and read."),
    storage_path: str = typer.Option("s3://omnilv-runs", "--storage-path",
                                     help="kuberay RayJobs: Ray Train storage_path (checkpoints, logs, export)."),
    region: str | None = typer.Option(None, "--region"),
    instance_type: str | None = typer.Option(None, "--instance-type", help="GPU machine type override."),
    instance_profile: str | None = typer.Option(None, "--instance-profile",
                                                   help="aws: IAM instance-profile ARN giving nodes S3 access."),
    project_id: str | None = typer.Option(None, "--project-id", help="gcp: project id."),
    name: str = typer.Option("omnilv", "--name", help="Cluster name."),
    out: Path | None = typer.Option(None, "--out", help="Write here instead of stdout."),
) -> None:
    """Write a cluster config of the given size from cluster/templates/ (validated before it is written)."""
    from cluster import render as rd
    from cluster.validate import validate_kuberay, validate_launcher

    opts = rd.RenderOptions(nodes=nodes, gpus_per_node=gpus_per_node, cpu_workers=cpu_workers, image=image,
                            s3_prefix=s3_prefix, storage_path=storage_path, region=region, instance_type=instance_type,
                            instance_profile=instance_profile, project_id=project_id, cluster_name=name)
    if job not in rd.JOBS:
        raise rd.RenderError(f"--job {job!r}: choose one of {', '.join(rd.JOBS)}")
    doc = rd.render(target, opts, job)
    errors = validate_kuberay(doc) if target == "kuberay" else validate_launcher(doc)
    if errors:
        raise rd.RenderError("the rendered config is invalid:\n  " + "\n  ".join(errors))
    cmd = f"omnilv cluster render {target} --nodes {nodes} --gpus-per-node {gpus_per_node} --cpu-workers {cpu_workers}"
    text = rd.dump(doc, cmd + (f" --job {job}" if target == "kuberay" else ""))
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Launcher YAML or KubeRay manifests.")) -> None:
    """Check launcher YAML against the installed Ray's autoscaler schema and KubeRay manifests' fields."""
    from cluster.validate import validate_file

    errors = [e for f in files for e in validate_file(f)]
    for e in errors:
        typer.secho(e, fg=typer.colors.RED, err=True)
    if errors:
        raise typer.Exit(1)
    typer.echo(f"{len(files)} file(s) valid")
