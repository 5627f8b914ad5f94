"""Check cluster configs before they reach a cloud: launcher YAML against the autoscaler schema that the
installed Ray ships, KubeRay manifests against the fields the KubeRay operator requires."""

from __future__ import annotations

import json
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import yaml


@cache
def launcher_schema() -> dict:
    """``ray/autoscaler/ray-schema.json`` of the installed Ray (found without importing Ray)."""
    spec = find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ray is not installed: pip install 'ray[default]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def validate_launcher(doc: dict) -> list[str]:
    """Schema errors of a cluster-launcher config (empty: valid)."""
    import jsonschema

    validator = jsonschema.Draft7Validator(launcher_schema())
    errors = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        errors.append(f"{where}: {err.message}")
    return errors


def _pod_errors(template: object, where: str) -> list[str]:
    containers = (template or {}).get("spec", {}).get("containers") if isinstance(template, dict) else None
    if not isinstance(containers, list) or not containers:
        return [f"{where}.template.spec.containers: a non-empty list is required"]
    return [f"{where}.template.spec.containers[{i}]: needs name and image"
            for i, c in enumerate(containers) if not (isinstance(c, dict) and c.get("name") and c.get("image"))]


def _cluster_spec_errors(spec: object, where: str) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: a mapping is required"]
    errors = []
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        errors.append(f"{where}.headGroupSpec: required")
    else:
        if not isinstance(head.get("rayStartParams", {}), dict):
            errors.append(f"{where}.headGroupSpec.rayStartParams: must be a mapping")
        errors += _pod_errors(head.get("template"), f"{where}.headGroupSpec")
    groups = spec.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        return errors + [f"{where}.workerGroupSpecs: must be a list"]
    for i, g in enumerate(groups):
        gw = f"{where}.workerGroupSpecs[{i}]"
        if not isinstance(g, dict):
            errors.append(f"{gw}: a mapping is required")
            continue
        if not g.get("groupName"):
            errors.append(f"{gw}.groupName: required")
        for key in ("replicas", "minReplicas", "maxReplicas"):
            if key in g and (not isinstance(g[key], int) or g[key] < 0):
                errors.append(f"{gw}.{key}: must be an integer ≥ 0")
        if "replicas" not in g:
            errors.append(f"{gw}.replicas: required")
        elif isinstance(g.get("minReplicas"), int) and isinstance(g.get("maxReplicas"), int) and not (
                g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]):
            errors.append(f"{gw}: needs minReplicas ≤ replicas ≤ maxReplicas")
        if not isinstance(g.get("rayStartParams"), dict):
            errors.append(f"{gw}.rayStartParams: required (a mapping, may be empty)")
        errors += _pod_errors(g.get("template"), gw)
    return errors


def validate_kuberay(doc: object) -> list[str]:
    """Errors of a KubeRay RayCluster/RayJob manifest (empty: valid)."""
    if not isinstance(doc, dict):
        return ["(top level): a mapping is required"]
    errors = []
    if doc.get("apiVersion") != "ray.io/v1":
        errors.append(f"apiVersion: expected ray.io/v1, found {doc.get('apiVersion')!r}")
    if not (doc.get("metadata") or {}).get("name"):
        errors.append("metadata.name: required")
    kind, spec = doc.get("kind"), doc.get("spec")
    if kind == "RayCluster":
        errors += _cluster_spec_errors(spec, "spec")
    elif kind == "RayJob":
        if not isinstance(spec, dict):
            return errors + ["spec: required"]
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            errors.append("spec.entrypoint: a command is required")
        if not isinstance(spec.get("shutdownAfterJobFinishes"), bool):
            errors.append("spec.shutdownAfterJobFinishes: must be true/false")
        if "runtimeEnvYAML" in spec:
            try:
                env = yaml.safe_load(spec["runtimeEnvYAML"] or "{}")
                if not isinstance(env, dict):
                    errors.append("spec.runtimeEnvYAML: must hold a YAML mapping")
            except yaml.YAMLError as e:
                errors.append(f"spec.runtimeEnvYAML: not YAML ({e})")
        if "clusterSelector" not in spec:
            errors += _cluster_spec_errors(spec.get("rayClusterSpec"), "spec.rayClusterSpec")
    else:
        errors.append(f"kind: expected RayCluster or RayJob, found {kind!r}")
    return errors


def validate_file(path: str | Path) -> list[str]:
    """Validate a YAML file, deciding by content which check applies; errors are prefixed with the path."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: {e}"]
    if not docs:
        return [f"{path}: empty"]
    errors = []
    for doc in docs:
        is_k8s = isinstance(doc, dict) and "apiVersion" in doc
        errors += [f"{path}: {e}" for e in (validate_kuberay(doc) if is_k8s else validate_launcher(doc))]
    return errors
