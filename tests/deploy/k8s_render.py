"""Reading and rendering deploy/k8s for the tests: kustomize files, `kubectl kustomize`, pods and CRDs.

Shared by tests/deploy/test_k8s*.py. kubernetes-validate knows the built-in kinds only; the custom
resources these manifests use (the Prometheus Operator's ServiceMonitor, KEDA's ScaledObject) are
checked by `crd_problems`: the fields their controllers require and what they must point at.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests claim to work on
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")

Resource = dict[str, Any]
Rendered = dict[tuple[str, str], Resource]


def documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> Resource:
    (document,) = documents(directory / "kustomization.yaml")
    return document


def resources_of(directory: Path, *, components: bool = True) -> Iterator[tuple[Path, Resource]]:
    """Every complete resource a kustomization pulls in (its resources and components, recursively)."""
    spec = kustomization(directory)
    for entry in spec.get("resources", []) + (spec.get("components", []) if components else []):
        path = directory / entry
        if path.is_dir():
            yield from resources_of(path)
        else:
            yield from ((path, doc) for doc in documents(path))


def resource_id(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def render(directory: Path) -> Rendered:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl (its built-in kustomize renders the overlays)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return {resource_id(doc): doc for doc in yaml.safe_load_all(result.stdout) if doc}


def render_with_components(tmp_path: Path, target: str, components: list[str]) -> Rendered:
    """`target` (a folder under deploy/k8s) with opt-in components added to its own kustomization,
    as deploy/README.md says to: in a copy of deploy/k8s, so their resources get its namespace."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    path = copy / target / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["components"] = spec.get("components", []) + [f"../../components/{name}" for name in components]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return render(copy / target)


def validate(resources: Rendered) -> None:
    """The Kubernetes schema for built-in kinds (strict), `crd_problems` for the custom ones."""
    for resource in resources.values():
        if resource["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    assert crd_problems(resources) == []


def pod_spec(workload: Resource) -> Resource:
    return workload["spec"]["template"]["spec"]


def workloads(resources: Rendered) -> Iterator[tuple[tuple[str, str], Resource]]:
    yield from ((key, r) for key, r in resources.items() if key[0] in WORKLOADS)


def containers(workload: Resource, *, init: bool = True) -> list[Resource]:
    spec = pod_spec(workload)
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def container(workload: Resource, name: str | None = None) -> Resource:
    found = [c for c in pod_spec(workload)["containers"] if name is None or c["name"] == name]
    (one,) = found
    return one


def env_of(container_spec: Resource) -> dict[str, Resource]:
    return {entry["name"]: entry for entry in container_spec.get("env", [])}


def secret_refs(workload: Resource) -> Iterator[tuple[str, bool]]:
    """(Secret name, optional) of every secretKeyRef of the pod."""
    for c in containers(workload):
        for entry in c.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], bool(ref.get("optional", False))


def namespace_of(resource: Resource) -> str | None:
    return resource["metadata"].get("namespace")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _expressions_select(expressions: list[Resource], labels: dict[str, str]) -> bool:
    for expression in expressions:
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
    return True


def crd_problems(resources: Rendered) -> list[str]:
    """The fields a ServiceMonitor or a ScaledObject needs, and that what they name exists."""
    problems: list[str] = []
    services = {name: r for (kind, name), r in resources.items() if kind == "Service"}
    for (kind, name), resource in resources.items():
        where = f"{kind}/{name}"
        spec = resource.get("spec", {})
        if kind == "ServiceMonitor":
            if resource.get("apiVersion") != "monitoring.coreos.com/v1":
                problems.append(f"{where}: apiVersion {resource.get('apiVersion')}")
            selector = spec.get("selector", {})
            selected = [
                s
                for s in services.values()
                if _selects(selector.get("matchLabels", {}), s["metadata"].get("labels", {}))
                and _expressions_select(selector.get("matchExpressions", []), s["metadata"].get("labels", {}))
            ]
            if not selected:
                problems.append(f"{where}: selects no Service")
            if not spec.get("endpoints"):
                problems.append(f"{where}: no endpoints")
            for endpoint in spec.get("endpoints", []):
                for service in selected:
                    ports = {p.get("name") for p in service["spec"]["ports"]}
                    if endpoint.get("port") not in ports:
                        problems.append(
                            f"{where}: no port {endpoint.get('port')} on {service['metadata']['name']}"
                        )
                credentials = endpoint.get("authorization", {}).get("credentials", {})
                if credentials and not {"name", "key"} <= credentials.keys():
                    problems.append(f"{where}: authorization credentials need a Secret name and key")
        elif kind == "ScaledObject":
            if resource.get("apiVersion") != "keda.sh/v1alpha1":
                problems.append(f"{where}: apiVersion {resource.get('apiVersion')}")
            target = spec.get("scaleTargetRef", {})
            target_kind = target.get("kind", "Deployment")
            if (target_kind, target.get("name")) not in resources:
                problems.append(f"{where}: scales {target_kind}/{target.get('name')}, which is no resource")
            low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
                problems.append(f"{where}: replicas {low}..{high}")
            if not spec.get("triggers"):
                problems.append(f"{where}: no triggers")
            for trigger in spec.get("triggers", []):
                metadata = trigger.get("metadata", {})
                if trigger.get("type") != "prometheus":
                    problems.append(f"{where}: trigger type {trigger.get('type')}")
                missing = {"serverAddress", "query", "threshold"} - metadata.keys()
                if missing:
                    problems.append(f"{where}: trigger lacks {sorted(missing)}")
                elif not all(isinstance(v, str) for v in metadata.values()):
                    problems.append(f"{where}: trigger metadata values are strings in KEDA's schema")
                else:
                    float(metadata["threshold"])
    return problems
