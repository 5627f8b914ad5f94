"""Render cluster configs of a given size from the YAML templates in ``cluster/templates/``.

Templates are plain, valid YAML (each validates on its own); rendering loads one, sets the fields
that depend on size/image/S3 (yaml load -> modify -> dump) and prepends a header naming the command
that produced it. ``python -m cluster.render`` rewrites the checked-in examples under ``cluster/``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from omnilv.errors import OmniLVError

TEMPLATES = Path(__file__).with_name("templates")
AWS_A100 = {8: "p4d.24xlarge"}  # p4de.24xlarge (80 GB A100) via --instance-type
GCP_A100 = {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g", 16: "a2-megagpu-16g"}
CPUS_PER_GPU = 11      # what a p4d/a2 node leaves for Ray Train workers and data loading (96 vCPU / 8, minus system)
MEMORY_GI_PER_GPU = 120
JOBS = ("raycluster", "corpus-build", "stage1", "stage2", "stage3", "lumen-stage1", "lumen-stage2")
# In the image the repository lives at /app (cluster/Dockerfile), so configs are addressed absolutely.
TRAIN_CONFIGS = {"stage1": "stage1_512.yaml", "stage2": "stage2_incontext.yaml", "stage3": "stage3_1024.yaml",
                 "lumen-stage1": "lumen_stage1.yaml", "lumen-stage2": "lumen_stage2.yaml"}
#: Jobs that read the corpus their config names (stage 3: the 1024² build; Lumen: the COCO/RefCOCO corpus), not the
#: 512² build under --s3-prefix.
OWN_CORPUS = ("stage3", "lumen-stage1", "lumen-stage2")


class RenderError(OmniLVError):
    """A size/option that has no valid config; message says which flag to change."""


@dataclass
class RenderOptions:
    """Flags of ``omnilv cluster render``."""

    nodes: int = 4
    gpus_per_node: int = 8
    cpu_workers: int = 4
    image: str | None = None
    s3_prefix: str = "s3://omnilv-corpora"
    storage_path: str = "s3://omnilv-runs"
    region: str | None = None
    instance_type: str | None = None
    instance_profile: str | None = None
    project_id: str | None = None
    cluster_name: str = "omnilv"
    corpus_config: str = "production_40m"


def ray_version() -> str:
    return metadata.version("ray")


def load_template(name: str) -> dict:
    with open(TEMPLATES / name) as f:
        return yaml.safe_load(f)


def runtime_env() -> dict:
    """The shared runtime env (no credentials) used by RayJobs and ``omnilv cluster submit``."""
    return load_template("runtime-env.yaml")


def _check(opts: RenderOptions) -> None:
    if opts.nodes < 0 or opts.cpu_workers < 0:
        raise RenderError("--nodes and --cpu-workers must be ≥ 0")
    if opts.gpus_per_node < 1:
        raise RenderError("--gpus-per-node must be ≥ 1")


def _gpu_instance(table: dict[int, str], opts: RenderOptions, cloud: str) -> str:
    if opts.instance_type:
        return opts.instance_type
    if opts.gpus_per_node not in table:
        sizes = ", ".join(str(k) for k in sorted(table))
        raise RenderError(f"no {cloud} A100 machine type with {opts.gpus_per_node} GPUs (known: {sizes}); "
                          "pass --instance-type")
    return table[opts.gpus_per_node]


def render_launcher(cloud: str, opts: RenderOptions) -> dict:
    """A Ray cluster-launcher config (``ray up``) for ``aws`` or ``gcp``."""
    _check(opts)
    cfg = load_template(f"{cloud}.yaml")
    cfg["cluster_name"] = opts.cluster_name
    cfg["max_workers"] = opts.nodes + opts.cpu_workers
    image = opts.image or cfg["docker"]["image"].replace("RAY_VERSION", ray_version())
    cfg["docker"]["image"] = image
    gpu, cpu = cfg["available_node_types"]["gpu_a100"], cfg["available_node_types"]["cpu_build"]
    gpu["min_workers"] = gpu["max_workers"] = opts.nodes
    gpu["resources"] = {"CPU": 12 * opts.gpus_per_node, "GPU": opts.gpus_per_node}
    cpu["max_workers"] = opts.cpu_workers
    if cloud == "aws":
        gpu["node_config"]["InstanceType"] = _gpu_instance(AWS_A100, opts, "AWS")
        if opts.region:
            cfg["provider"]["region"] = opts.region
            cfg["provider"]["availability_zone"] = f"{opts.region}a,{opts.region}b"
        if opts.instance_profile:  # S3 access for every node through the instance role, never keys
            for node in cfg["available_node_types"].values():
                node["node_config"]["IamInstanceProfile"] = {"Arn": opts.instance_profile}
    else:
        gpu["node_config"]["machineType"] = _gpu_instance(GCP_A100, opts, "GCP")
        if opts.region:
            cfg["provider"]["region"] = opts.region
            cfg["provider"]["availability_zone"] = f"{opts.region}-a"
        if opts.project_id:
            cfg["provider"]["project_id"] = opts.project_id
    return cfg


def render_raycluster(opts: RenderOptions, gpu_replicas: int | None = None, cpu_replicas: int | None = None) -> dict:
    """A KubeRay RayCluster with a GPU and a CPU worker group."""
    _check(opts)
    rc = load_template("kuberay-raycluster.yaml")
    rc["metadata"]["name"] = opts.cluster_name
    rc["spec"]["rayVersion"] = ray_version()
    image = opts.image or _default_image()
    rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = image
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    sizes = {"gpu-a100": opts.nodes if gpu_replicas is None else gpu_replicas,
             "cpu-build": opts.cpu_workers if cpu_replicas is None else cpu_replicas}
    for name, group in groups.items():
        group["replicas"] = group["minReplicas"] = group["maxReplicas"] = sizes[name]
        group["template"]["spec"]["containers"][0]["image"] = image
    res = groups["gpu-a100"]["template"]["spec"]["containers"][0]["resources"]
    g = opts.gpus_per_node
    for part in ("requests", "limits"):
        res[part] = {"cpu": str(CPUS_PER_GPU * g), "memory": f"{MEMORY_GI_PER_GPU * g}Gi", "nvidia.com/gpu": str(g)}
    return rc


def job_entrypoint(job: str, opts: RenderOptions) -> list[str]:
    """The ``omnilv`` command a RayJob runs: the corpus goes under --s3-prefix, checkpoints under --storage-path."""
    corpus = f"{opts.s3_prefix.rstrip('/')}/{opts.corpus_config}"
    if job == "corpus-build":
        return ["omnilv", "corpus", "build", opts.corpus_config, "--set", f"output.path={corpus}", "--quiet"]
    if job not in TRAIN_CONFIGS:
        raise RenderError(f"unknown job {job!r}; choose one of {', '.join(JOBS)}")
    cmd = ["omnilv", "train", f"/app/configs/train/{TRAIN_CONFIGS[job]}"]
    if job not in OWN_CORPUS:
        cmd += ["--set", f"data.corpus={corpus}"]
    # One Ray Train worker (one DeepSpeed rank) per GPU of the cluster this RayJob creates.
    return cmd + ["--set", f"run.storage_path={opts.storage_path.rstrip('/')}",
                  "--set", f"run.workers={opts.nodes * opts.gpus_per_node}"]


def render_rayjob(job: str, opts: RenderOptions) -> dict:
    """A RayJob that creates its own cluster, runs one command and shuts the cluster down."""
    rj = load_template("kuberay-rayjob.yaml")
    entry = job_entrypoint(job, opts)
    rj["metadata"]["name"] = f"{opts.cluster_name}-{job}"
    rj["spec"]["entrypoint"] = shlex.join(entry)
    rj["spec"]["runtimeEnvYAML"] = yaml.safe_dump(runtime_env(), sort_keys=False)
    # Builds need CPUs only; training needs the GPU group (the CPU group stays at 0).
    build = job == "corpus-build"
    spec = render_raycluster(opts, gpu_replicas=0 if build else opts.nodes,
                             cpu_replicas=opts.cpu_workers if build else 0)
    rj["spec"]["rayClusterSpec"] = spec["spec"]
    return rj


def render(target: str, opts: RenderOptions, job: str = "raycluster") -> dict:
    if target in ("aws", "gcp"):
        return render_launcher(target, opts)
    if target == "kuberay":
        return render_raycluster(opts) if job == "raycluster" else render_rayjob(job, opts)
    raise RenderError(f"unknown target {target!r}; choose aws, gcp or kuberay")


def dump(doc: dict, command: str) -> str:
    header = (f"# Generated by `{command}` from cluster/templates/.\n"
              "# Edit the template or re-render; no credentials belong in this file.\n")
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (runtimeEnvYAML) written as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _default_image() -> str:
    from omnilv import __version__

    return f"omnilv:{__version__}"


def examples() -> dict[str, str]:
    """The checked-in example configs (default sizes), keyed by path relative to ``cluster/``."""
    opts = RenderOptions()
    base = "omnilv cluster render"
    out = {"aws.yaml": dump(render("aws", opts), f"{base} aws --out cluster/aws.yaml"),
           "gcp.yaml": dump(render("gcp", opts), f"{base} gcp --out cluster/gcp.yaml")}
    for job in JOBS:
        name = "raycluster.yaml" if job == "raycluster" else f"rayjob-{job}.yaml"
        out[f"kuberay/{name}"] = dump(render("kuberay", opts, job), f"{base} kuberay --job {job} "
                                      f"--out cluster/kuberay/{name}")
    return out


def write_examples(root: Path = Path(__file__).parent) -> list[Path]:
    written = []
    for rel, text in examples().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_examples():
        sys.stdout.write(f"wrote {p}\n")
