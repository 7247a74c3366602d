"""deploy/k8s: the kustomization renders, every resource is valid Kubernetes, and the overlays say what we mean.

Offline: the manifests are plain YAML. Without any tool, every file a kustomization lists must exist
and every overlay patch must target a resource that exists. Each complete resource is validated
against the Kubernetes OpenAPI schema of `K8S_VERSION` with kubernetes-validate (strict: an unknown
field fails). Where `kubectl` is installed (it is on this project's machines) its built-in kustomize
renders each overlay, and the rendered resources are validated and checked against the services'
real settings classes. The trainer's manifests: test_k8s_trainer.py; the opt-in monitoring and
autoscaling and the dashboard: test_k8s_observability.py; deploy/README.md's walk: test_k8s_readme.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from rcsd.client._constants import DEFAULT_TIMEOUT
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings
from rcsd.trainer.config import ServicesConfig
from tests.deploy.k8s_render import (
    K8S,
    K8S_VERSION,
    ROOT,
    Rendered,
    Resource,
    container,
    documents,
    env_of,
    kustomization,
    pod_spec,
    render,
    resource_id,
    resources_of,
    secret_refs,
    validate,
    workloads,
)

OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir())
SERVICES: dict[str, type[ServiceSettings]] = {"teacher": TeacherSettings, "rubric": RubricSettings}
# Created with kubectl before the gpu overlay is applied (deploy/README.md), never committed.
EXTERNAL_SECRETS = {"gpu": {"rcsd-api-key", "rcsd-postgres"}, "dev": set()}
# Kustomizations the overlays do not include, each with the one its patches apply to (opt-in components).
OTHER_KUSTOMIZATIONS = {
    "trainer": None,
    "experiments/rcsd": None,
    "experiments/opsd": None,
    "components/rollout-server": "trainer",
    "components/monitoring": "overlays/gpu",
    "components/keda": "overlays/gpu",
}


def kustomization_problems(directory: Path, outer: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """What kustomize would trip on: missing files, patches, replicas or images that match nothing.

    `outer`: the resources of the kustomization that includes this one as a component (its patches
    target those)."""
    problems: list[str] = []
    if not (directory / "kustomization.yaml").is_file():
        return [f"{directory}: no kustomization.yaml"]
    spec = kustomization(directory)
    for entry in spec.get("resources", []) + spec.get("components", []):
        if not (directory / entry).exists():
            problems.append(f"{directory.name}: {entry} does not exist")
    if problems:
        return problems
    for entry in spec.get("resources", []):
        if (directory / entry).is_dir():
            problems += kustomization_problems(directory / entry)
    own = {resource_id(resource) for _, resource in resources_of(directory, components=False)} | outer
    for entry in spec.get("components", []):
        problems += kustomization_problems(directory / entry, frozenset(own))
    if problems:
        return problems

    ids = {resource_id(resource) for _, resource in resources_of(directory)} | outer
    images = {
        c["image"]
        for _, resource in resources_of(directory)
        for c in resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    }
    for patch in spec.get("patches", []):
        if "target" in patch:
            targets = [(patch["target"]["kind"], patch["target"]["name"])]
        elif (directory / patch["path"]).is_file():
            targets = [resource_id(doc) for doc in documents(directory / patch["path"])]
        else:
            problems.append(f"{directory.name}: patch {patch['path']} does not exist")
            continue
        problems += [
            f"{directory.name}: a patch targets {kind}/{name}, which is no resource"
            for kind, name in targets
            if (kind, name) not in ids
        ]
    for replicas in spec.get("replicas", []):
        if not {("Deployment", replicas["name"]), ("StatefulSet", replicas["name"])} & ids:
            problems.append(f"{directory.name}: replicas for {replicas['name']}, which is no workload")
    if not outer:  # a component's images may name its includer's containers
        problems += [
            f"{directory.name}: image {image['name']} is used by no container"
            for image in spec.get("images", [])
            if image["name"] not in images
        ]
    return problems


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, render(K8S / "overlays" / request.param)


def _container(deployment: Resource) -> Resource:
    return container(deployment)


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


@pytest.mark.parametrize("other", sorted(OTHER_KUSTOMIZATIONS))
def test_the_other_kustomizations_list_files_that_exist(other: str) -> None:
    includer = OTHER_KUSTOMIZATIONS[other]
    outer = frozenset(resource_id(r) for _, r in resources_of(K8S / includer)) if includer else frozenset()
    assert kustomization_problems(K8S / other, outer) == []


def test_every_resource_matches_the_kubernetes_schema() -> None:
    directories = [K8S / "overlays" / overlay for overlay in OVERLAYS] + [
        K8S / o for o in OTHER_KUSTOMIZATIONS
    ]
    for directory in directories:
        for path, resource in resources_of(directory):
            if resource["kind"] in {"ServiceMonitor", "ScaledObject"}:
                continue  # custom resources: k8s_render.crd_problems, on the rendered overlays
            try:
                kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{path.relative_to(ROOT)} {resource_id(resource)}: {error}")


def test_the_schema_check_catches_a_misspelled_field() -> None:
    (deployment,) = [
        r for _, r in resources_of(K8S / "base") if resource_id(r) == ("Deployment", "rcsd-teacher")
    ]
    container = _container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_rendered_overlays_match_the_kubernetes_schema(rendered: Any) -> None:
    _, resources = rendered
    validate(resources)


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


def references_missing(resources: Rendered) -> set[str]:
    """Every Secret, ConfigMap and claim a workload names that is not among `resources`; a Secret
    reference marked optional may be absent (rcsd-hf-token: only gated models need it)."""
    missing: set[str] = set()
    for _, workload in workloads(resources):
        spec = pod_spec(workload)
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in resources:
                missing.add(f"claim {claim}")
            config_map = volume.get("configMap", {}).get("name")
            if config_map and ("ConfigMap", config_map) not in resources:
                missing.add(f"configmap {config_map}")
        for c in spec["containers"] + spec.get("initContainers", []):
            for source in c.get("envFrom", []):
                if ("ConfigMap", source["configMapRef"]["name"]) not in resources:
                    missing.add(f"configmap {source['configMapRef']['name']}")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in {v["name"] for v in spec.get("volumes", [])} | claims:
                    missing.add(f"volume {mount['name']}")
        missing |= {
            secret
            for secret, optional in secret_refs(workload)
            if not optional and ("Secret", secret) not in resources
        }
    return missing


def test_references_resolve(rendered: Any) -> None:
    """Every Secret, ConfigMap and claim a workload names exists, but the Secrets made by hand."""
    overlay, resources = rendered
    assert references_missing(resources) == EXTERNAL_SECRETS[overlay]


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


def test_every_pod_drops_service_links(rendered: Any) -> None:
    """No <SERVICE>_PORT=tcp://... variables: they shadow settings (tests/services/kit/test_service_links.py)."""
    _, resources = rendered
    for key, workload in workloads(resources):
        assert pod_spec(workload).get("enableServiceLinks") is False, key


def test_the_hugging_face_token_is_an_optional_secret(rendered: Any) -> None:
    _, resources = rendered
    for key, workload in workloads(resources):
        for c in pod_spec(workload)["containers"]:
            if c["image"].startswith("postgres"):
                continue
            token = env_of(c)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert token == {"name": "rcsd-hf-token", "key": "token", "optional": True}, key


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_shutdown_outlasts_the_longest_call(
    rendered: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """SIGTERM comes after the preStop delay; in-flight requests then get graceful_shutdown_s, which
    covers the longest call a client waits for (the trainer's attempt timeout, above the client
    library's default); the grace period covers all of it, with time left to stop the engine."""
    _, resources = rendered
    settings_class = SERVICES[name]
    deployment = resources["Deployment", f"rcsd-{name}"]
    c = _container(deployment)
    for key, value in resources["ConfigMap", c["envFrom"][0]["configMapRef"]["name"]]["data"].items():
        monkeypatch.setenv(key, value)
    settings = settings_class()  # type: ignore[call-arg]
    sleep, seconds = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep" and 5 <= int(seconds) <= 30
    longest_call = max(ServicesConfig().timeout_s, DEFAULT_TIMEOUT.read or 0)
    assert settings.graceful_shutdown_s >= longest_call
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= int(seconds) + settings.graceful_shutdown_s + 30, "and time to stop the engine"


def test_disruption_budgets_leave_a_replica(rendered: Any) -> None:
    _, resources = rendered
    for name in SERVICES:
        budget = resources["PodDisruptionBudget", f"rcsd-{name}"]["spec"]
        labels = resources["Deployment", f"rcsd-{name}"]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget == {"maxUnavailable": 1, "selector": budget["selector"]}, (
            "never blocks a 1-replica drain"
        )


def test_the_vllm_cache_is_on_the_shared_volume(rendered: Any) -> None:
    _, resources = rendered
    for name in SERVICES:
        deployment = resources["Deployment", f"rcsd-{name}"]
        c = _container(deployment)
        root = env_of(c)["VLLM_CACHE_ROOT"]["value"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == root]
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "rcsd-model-cache"
        assert mount["subPath"] == "vllm"


def test_the_gpu_overlay_admits_what_the_engine_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render(K8S / "overlays" / "gpu")
    for name, settings_class in SERVICES.items():
        for key, value in resources["ConfigMap", f"rcsd-{name}"]["data"].items():
            monkeypatch.setenv(key, value)
        settings = settings_class()  # type: ignore[call-arg]
        default = settings_class.model_fields["max_concurrency"].default
        assert settings.max_concurrency >= settings.max_num_seqs > default, name
        assert settings.max_queue >= 2 * settings.max_concurrency, name


def test_the_gpu_overlay_downloads_each_model_once() -> None:
    """One Job fills the cache; each replica waits for its own model, then loads it offline."""
    resources = render(K8S / "overlays" / "gpu")
    job = resources["Job", "rcsd-model-download"]
    (download,) = pod_spec(job)["containers"]
    assert download["command"][-1] == "download"
    assert {s["configMapRef"]["name"] for s in download["envFrom"]} == {"rcsd-teacher", "rcsd-rubric"}
    cache = {(m["mountPath"], m.get("subPath")) for m in download["volumeMounts"]}
    for name in SERVICES:
        deployment = resources["Deployment", f"rcsd-{name}"]
        (wait,) = pod_spec(deployment)["initContainers"]
        assert wait["command"][-1] == "wait" and wait["command"][:2] == download["command"][:2]
        assert [s["configMapRef"]["name"] for s in wait["envFrom"]] == [f"rcsd-{name}"]
        assert cache == {(m["mountPath"], m.get("subPath")) for m in wait["volumeMounts"]}
        hf_mount = ("/home/rcsd/.cache/huggingface", "huggingface")
        assert hf_mount in {
            (m["mountPath"], m.get("subPath")) for m in _container(deployment)["volumeMounts"]
        }
        assert env_of(_container(deployment))["HF_HUB_OFFLINE"]["value"] == "1"
    dev = render(K8S / "overlays" / "dev")
    assert ("Job", "rcsd-model-download") not in dev, "dev: the model is inside the image"


def test_the_gpu_overlay_has_its_namespace(rendered: Any) -> None:
    """The trainers' configs name the services as <service>.rcsd.svc (test_k8s_trainer.py)."""
    overlay, resources = rendered
    namespaces = {r["metadata"].get("namespace") for r in resources.values()}
    assert namespaces == ({"rcsd"} if overlay == "gpu" else {None})
