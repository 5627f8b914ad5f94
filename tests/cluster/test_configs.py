"""Cluster configs: launcher YAML validates against the installed Ray's autoscaler schema, KubeRay manifests
carry what the operator requires, and the checked-in examples are exactly what `render` produces."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster import render as rd
from cluster.validate import launcher_schema, validate_file, validate_kuberay, validate_launcher
from omnilv.cli import app

CLUSTER = Path(rd.__file__).parent
runner = CliRunner()
LAUNCHER_FILES = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml", rd.TEMPLATES / "aws.yaml", rd.TEMPLATES / "gcp.yaml"]
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml")) + [rd.TEMPLATES / "kuberay-raycluster.yaml"]


def test_schema_is_the_one_ray_ships():
    schema = launcher_schema()
    assert "available_node_types" in schema["properties"] and schema["required"] == ["cluster_name", "provider"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name if p.parent == CLUSTER else f"tpl-{p.name}")
def test_launcher_files_validate(path):
    assert validate_file(path) == []


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
@pytest.mark.parametrize("nodes, gpus, cpu_workers", [(1, 8, 0), (16, 8, 8)])
def test_rendered_launchers_validate_and_have_the_asked_size(cloud, nodes, gpus, cpu_workers):
    cfg = rd.render(cloud, rd.RenderOptions(nodes=nodes, gpus_per_node=gpus, cpu_workers=cpu_workers))
    assert validate_launcher(cfg) == []
    gpu = cfg["available_node_types"]["gpu_a100"]
    assert gpu["min_workers"] == gpu["max_workers"] == nodes and gpu["resources"]["GPU"] == gpus
    assert cfg["available_node_types"]["cpu_build"]["max_workers"] == cpu_workers
    assert cfg["max_workers"] == nodes + cpu_workers
    machine = gpu["node_config"].get("InstanceType") or gpu["node_config"]["machineType"]
    assert machine == {"aws": "p4d.24xlarge", "gcp": "a2-highgpu-8g"}[cloud]
    assert rd.ray_version() in cfg["docker"]["image"]  # image matches the pinned Ray
    assert any("requirements/constraints.txt" in c for c in cfg["setup_commands"])


def test_schema_check_catches_a_broken_launcher():
    cfg = rd.render("aws", rd.RenderOptions())
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_a100"]["resources"]["GPU"] = "eight"
    del bad["provider"]
    bad["no_such_field"] = 1
    errors = validate_launcher(bad)
    assert any("provider" in e for e in errors) and any("no_such_field" in e for e in errors)
    assert any("available_node_types.gpu_a100.resources.GPU" in e for e in errors)


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_files_parse_and_have_required_fields(path):
    doc = yaml.safe_load(path.read_text())
    assert validate_kuberay(doc) == []
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")


@pytest.mark.parametrize("job", [j for j in rd.JOBS if j != "raycluster"])
def test_rayjobs_run_omnilv_and_shut_down(job):
    opts = rd.RenderOptions(nodes=3, cpu_workers=5, s3_prefix="s3://b/p/", storage_path="s3://r/")
    spec = rd.render("kuberay", opts, job)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    entry = spec["entrypoint"]
    if job == "corpus-build":
        assert entry.startswith("omnilv corpus build production_40m") and "output.path=s3://b/p/production_40m" in entry
    else:
        config = Path("configs/train") / rd.TRAIN_CONFIGS[job]
        assert entry.startswith(f"omnilv train /app/{config} ")
        assert (CLUSTER.parent / config).is_file()  # the config the RayJob names exists in the repo (/app)
        assert "run.storage_path=s3://r " in entry + " " and "run.workers=24" in entry
        assert ("data.corpus=s3://b/p/production_40m" in entry) == (job not in rd.OWN_CORPUS)
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env == rd.runtime_env() and "AWS_SECRET_ACCESS_KEY" not in spec["runtimeEnvYAML"]
    groups = {g["groupName"]: g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    assert groups == ({"gpu-a100": 0, "cpu-build": 5} if job == "corpus-build" else {"gpu-a100": 3, "cpu-build": 0})


def test_kuberay_validator_catches_missing_fields():
    rc = rd.render("kuberay", rd.RenderOptions())
    bad = copy.deepcopy(rc)
    bad["apiVersion"] = "ray.io/v1alpha1"
    del bad["spec"]["workerGroupSpecs"][0]["rayStartParams"]
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"] = []
    bad["spec"]["workerGroupSpecs"][1]["replicas"] = 9  # above maxReplicas
    errors = validate_kuberay(bad)
    assert any(e.startswith("apiVersion") for e in errors)
    assert any("workerGroupSpecs[0].rayStartParams" in e for e in errors)
    assert any("workerGroupSpecs[1].template.spec.containers" in e for e in errors)
    assert any("minReplicas ≤ replicas ≤ maxReplicas" in e for e in errors)
    job = rd.render("kuberay", rd.RenderOptions(), "stage1")
    del job["spec"]["entrypoint"]
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    errors = validate_kuberay(job)
    assert any("spec.entrypoint" in e for e in errors) and any("shutdownAfterJobFinishes" in e for e in errors)


def test_checked_in_examples_are_current():
    for rel, text in rd.examples().items():
        assert (CLUSTER / rel).read_text() == text, f"cluster/{rel} is stale: run python -m cluster.render"


SECRET_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def _inline_secrets(node) -> list[str]:
    """Credential values written into a config: a secret-named key with a value, or an env item carrying one."""
    found = []
    if isinstance(node, dict):
        if node.get("name") in SECRET_NAMES and "value" in node:
            found.append(node["name"])
        found += [k for k, v in node.items() if str(k).upper() in SECRET_NAMES and v]
        nodes = list(node.values()) + ([yaml.safe_load(node["runtimeEnvYAML"])] if "runtimeEnvYAML" in node else [])
    elif isinstance(node, list):
        nodes = node
    else:
        return found
    return found + [f for n in nodes for f in _inline_secrets(n)]


def test_no_credentials_in_any_config():
    docs = {p: yaml.safe_load(p.read_text()) for p in CLUSTER.rglob("*.yaml")}
    assert len(docs) >= 11
    for path, doc in docs.items():
        assert _inline_secrets(doc) == [], path
        assert not re.search(r"AKIA[0-9A-Z]{16}", path.read_text()), path
    # The check itself finds an inline key.
    assert _inline_secrets({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}) == ["AWS_SECRET_ACCESS_KEY"]
    assert _inline_secrets({"runtimeEnvYAML": "env_vars: {AWS_SESSION_TOKEN: t}"}) == ["AWS_SESSION_TOKEN"]


def test_render_cli_writes_a_valid_file(tmp_path):
    out = tmp_path / "c.yaml"
    r = runner.invoke(app, ["cluster", "render", "aws", "--nodes", "2", "--gpus-per-node", "8", "--cpu-workers", "1",
                            "--instance-profile", "arn:aws:iam::123456789012:instance-profile/omnilv-s3",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert validate_file(out) == []
    cfg = yaml.safe_load(out.read_text())
    assert cfg["available_node_types"]["gpu_a100"]["node_config"]["IamInstanceProfile"]["Arn"].endswith("omnilv-s3")
    r = runner.invoke(app, ["cluster", "render", "kuberay", "--job", "stage3", "--image", "reg/omnilv:1"])
    assert r.exit_code == 0 and validate_kuberay(yaml.safe_load(r.output)) == []
    assert "reg/omnilv:1" in r.output and "stage3_1024.yaml" in r.output


def test_render_cli_errors_are_for_people():
    r = runner.invoke(app, ["cluster", "render", "aws", "--gpus-per-node", "3"])
    assert r.exit_code == 2 and "no AWS A100 machine type with 3 GPUs" in r.output and "--instance-type" in r.output
    r = runner.invoke(app, ["cluster", "render", "azure"])
    assert r.exit_code == 2 and "choose aws, gcp or kuberay" in r.output
    r = runner.invoke(app, ["cluster", "validate", str(rd.TEMPLATES / "runtime-env.yaml")])
    assert r.exit_code == 1  # a runtime env is not a launcher config: the schema says what is missing
