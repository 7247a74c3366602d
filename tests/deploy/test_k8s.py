"""deploy/k8s: the kustomization renders, every resource is valid Kubernetes, and the overlays say what we mean.

Offline: the manifests are plain YAML. Without any tool, every file a kustomization lists must exist
and every overlay patch must target a resource that exists. Each complete resource is validated
against the Kubernetes OpenAPI schema of `K8S_VERSION` with kubernetes-validate (strict: an unknown
field fails). Where `kubectl` is installed (it is on this project's machines) its built-in kustomize
renders each overlay, and the rendered resources are validated and checked against the services'
real settings classes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir())
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests claim to work on
SERVICES: dict[str, type[ServiceSettings]] = {"teacher": TeacherSettings, "rubric": RubricSettings}
# Created with kubectl before the gpu overlay is applied (deploy/README.md), never committed.
EXTERNAL_SECRETS = {"gpu": {"rcsd-api-key", "rcsd-postgres"}, "dev": set()}

Resource = dict[str, Any]


def _documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(directory: Path) -> Resource:
    (document,) = _documents(directory / "kustomization.yaml")
    return document


def _resources(directory: Path) -> Iterator[tuple[Path, Resource]]:
    """Every complete resource a kustomization pulls in (its resources and components, recursively)."""
    kustomization = _kustomization(directory)
    for entry in kustomization.get("resources", []) + kustomization.get("components", []):
        path = directory / entry
        if path.is_dir():
            yield from _resources(path)
        else:
            yield from ((path, doc) for doc in _documents(path))


def _id(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def kustomization_problems(directory: Path) -> list[str]:
    """What kustomize would trip on: missing files, patches, replicas or images that match nothing."""
    problems: list[str] = []
    if not (directory / "kustomization.yaml").is_file():
        return [f"{directory}: no kustomization.yaml"]
    kustomization = _kustomization(directory)
    for entry in kustomization.get("resources", []) + kustomization.get("components", []):
        path = directory / entry
        if path.is_dir():
            problems += kustomization_problems(path)
        elif not path.is_file():
            problems.append(f"{directory.name}: {entry} does not exist")
    if problems:
        return problems

    ids = {_id(resource) for _, resource in _resources(directory)}
    images = {
        container["image"]
        for _, resource in _resources(directory)
        for container in resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    }
    for patch in kustomization.get("patches", []):
        if "target" in patch:
            targets = [(patch["target"]["kind"], patch["target"]["name"])]
        elif (directory / patch["path"]).is_file():
            targets = [_id(doc) for doc in _documents(directory / patch["path"])]
        else:
            problems.append(f"{directory.name}: patch {patch['path']} does not exist")
            continue
        problems += [
            f"{directory.name}: a patch targets {kind}/{name}, which is no resource"
            for kind, name in targets
            if (kind, name) not in ids
        ]
    for replicas in kustomization.get("replicas", []):
        if not {("Deployment", replicas["name"]), ("StatefulSet", replicas["name"])} & ids:
            problems.append(f"{directory.name}: replicas for {replicas['name']}, which is no workload")
    problems += [
        f"{directory.name}: image {image['name']} is used by no container"
        for image in kustomization.get("images", [])
        if image["name"] not in images
    ]
    return problems


def _render(overlay: Path) -> list[Resource]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl (its built-in kustomize renders the overlays)")
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], Resource]]:
    resources = _render(K8S / "overlays" / request.param)
    return request.param, {_id(resource): resource for resource in resources}


def _container(deployment: Resource) -> Resource:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_overlays_exist() -> None:
    assert set(OVERLAYS) == {"dev", "gpu"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_listed_files_exist_and_patches_hit_resources(overlay: str) -> None:
    assert kustomization_problems(K8S / "overlays" / overlay) == []


def test_a_patch_of_a_missing_resource_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    gpus = copy / "overlays" / "gpu" / "gpus.yaml"
    gpus.write_text(gpus.read_text().replace("name: rcsd-teacher\n", "name: rcsd-teachr\n", 1))
    assert kustomization_problems(copy / "overlays" / "gpu") == [
        "gpu: a patch targets Deployment/rcsd-teachr, which is no resource"
    ]
    if shutil.which("kubectl"):
        broken = subprocess.run(
            ["kubectl", "kustomize", str(copy / "overlays" / "gpu")], capture_output=True, timeout=60
        )
        assert broken.returncode != 0, "kustomize agrees"


def test_every_resource_matches_the_kubernetes_schema() -> None:
    for base in (K8S / "base", K8S / "components" / "postgres"):
        for path, resource in _resources(base):
            try:
                kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{path.relative_to(ROOT)} {_id(resource)}: {error}")


def test_the_schema_check_catches_a_misspelled_field() -> None:
    (deployment,) = [r for _, r in _resources(K8S / "base") if _id(r) == ("Deployment", "rcsd-teacher")]
    container = _container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_rendered_overlays_match_the_kubernetes_schema(rendered: Any) -> None:
    _, resources = rendered
    for resource in resources.values():
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_deployment_serves_with_the_real_settings(
    rendered: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    overlay, resources = rendered
    settings_class = SERVICES[name]
    prefix = settings_class.model_config["env_prefix"]
    deployment = resources["Deployment", f"rcsd-{name}"]
    container = _container(deployment)
    assert container["args"] == ["serve", name], "every setting is an env var, none a flag"

    (source,) = container["envFrom"]
    config = resources["ConfigMap", source["configMapRef"]["name"]]["data"]
    for key in config:
        assert key.startswith(prefix) and key.removeprefix(prefix).lower() in settings_class.model_fields, key
        monkeypatch.setenv(key, config[key])
    settings = settings_class()  # type: ignore[call-arg]  (model comes from the env)
    assert settings.host == "0.0.0.0"
    assert settings.backend == "vllm"

    (port,) = container["ports"]
    assert port["containerPort"] == settings.port == settings_class.model_fields["port"].default
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/ready",
        "readinessProbe": "/ready",
        "livenessProbe": "/health",
    }
    assert all(probe["port"] == port["name"] for probe in probes.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "long enough to load a model"

    (key,) = [e for e in container["env"] if e["name"] == f"{prefix}API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["key"] == "api-key"

    gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    if overlay == "gpu":
        parallel = int(config[f"{prefix}TENSOR_PARALLEL_SIZE"]) * int(
            config[f"{prefix}PIPELINE_PARALLEL_SIZE"]
        )
        assert gpus == parallel, "a replica's GPUs are its tensor x pipeline parallel size"
    else:
        assert gpus == 0 and "/opt/rcsd/models/" in settings.model, "dev: the CPU image's bundled model"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_services_select_their_deployment(rendered: Any, name: str) -> None:
    _, resources = rendered
    labels = resources["Deployment", f"rcsd-{name}"]["spec"]["template"]["metadata"]["labels"]
    port = _container(resources["Deployment", f"rcsd-{name}"])["ports"][0]
    for service_name in (f"rcsd-{name}", f"rcsd-{name}-pods"):
        service = resources["Service", service_name]["spec"]
        assert service["selector"].items() <= labels.items()
        (service_port,) = service["ports"]
        assert service_port["port"] == port["containerPort"] and service_port["targetPort"] == port["name"]
    assert resources["Service", f"rcsd-{name}-pods"]["spec"]["clusterIP"] == "None", "one address per pod"


def test_references_resolve(rendered: Any) -> None:
    """Every Secret, ConfigMap and claim a workload names exists, but the Secrets made by hand."""
    overlay, resources = rendered
    missing: set[str] = set()
    for (kind, _), resource in resources.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        spec = resource["spec"]["template"]["spec"]
        claims = {c["metadata"]["name"] for c in resource["spec"].get("volumeClaimTemplates", [])}
        for volume in spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in resources:
                missing.add(f"claim {claim}")
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in resources
            for env in container.get("env", []):
                secret = env.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                if secret and ("Secret", secret) not in resources:
                    missing.add(secret)
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in {v["name"] for v in spec.get("volumes", [])} | claims
    assert missing == EXTERNAL_SECRETS[overlay]


def test_rubric_store(rendered: Any) -> None:
    overlay, resources = rendered
    url = urlsplit(resources["ConfigMap", "rcsd-rubric"]["data"]["RCSD_RUBRIC_STORE_URL"])
    assert (url.scheme, url.username, url.password) == ("postgresql", "rcsd", None), "password: PGPASSWORD"
    host = url.hostname
    if overlay == "dev":
        assert ("Service", host) in resources and ("StatefulSet", host) in resources
        postgres = _container(resources["StatefulSet", host])
        assert postgres["image"] == "postgres:16"
    else:
        assert ("StatefulSet", "rcsd-postgres") not in resources, "production: an external server"
        assert host is not None and "." in host, "a server outside the cluster's short names"


def test_replicas_and_images(rendered: Any) -> None:
    overlay, resources = rendered
    replicas = {name: resources["Deployment", f"rcsd-{name}"]["spec"]["replicas"] for name in SERVICES}
    images = {_container(resources["Deployment", f"rcsd-{name}"])["image"] for name in SERVICES}
    if overlay == "gpu":
        assert replicas == {"teacher": 2, "rubric": 1}
        assert images == {"registry.example.com/rcsd:0.1.0"}
        cache = resources["PersistentVolumeClaim", "rcsd-model-cache"]["spec"]
        assert cache["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share it"
    else:
        assert replicas == {"teacher": 1, "rubric": 1}
        assert images == {"rcsd-cpu:latest"}, "the image deploy/Dockerfile.cpu builds"
