"""deploy/k8s/trainer and experiments/: `rcsd train` under torchrun as an Indexed Job, and rollout servers.

Each run overlay is rendered with `kubectl kustomize` and validated against the Kubernetes schema; the
Job's torchrun command must agree with the Job (nodes, GPUs, rendezvous on pod 0 through the headless
Service), and its config, with the overrides the command appends, must load with the trainer's own
`load_config` and name the services where overlays/gpu puts them.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rcsd.trainer.config import TrainConfig, load_config
from tests.deploy.k8s_render import (
    K8S,
    Rendered,
    Resource,
    container,
    env_of,
    pod_spec,
    render,
    render_with_components,
    validate,
)

RUNS = sorted(path.name for path in (K8S / "experiments").iterdir())


@pytest.fixture(scope="module")
def gpu() -> Rendered:
    return render(K8S / "overlays" / "gpu")


@pytest.fixture(scope="module", params=RUNS)
def run(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, render(K8S / "experiments" / request.param)


def _flags(args: list[str]) -> dict[str, str]:
    """torchrun's --key=value flags, up to `-m`."""
    flags = {}
    for arg in args[: args.index("-m")]:
        key, _, value = arg.removeprefix("--").partition("=")
        flags[key] = value
    return flags


def _train_args(args: list[str]) -> list[str]:
    """What follows `-m rcsd.trainer.cli train`: options, the config path, overrides."""
    module = args.index("-m")
    assert args[module + 1 : module + 3] == ["rcsd.trainer.cli", "train"]
    return args[module + 3 :]


def _config(resources: Rendered, job: Resource, tmp_path: Path) -> TrainConfig:
    """The Job's TrainConfig as `rcsd train` reads it: the mounted file, then the appended overrides."""
    train = _train_args(container(job)["args"])
    assert train[0] == "--resume", "a retried pod continues from the latest checkpoint"
    path, overrides = Path(train[1]), train[2:]
    (mount,) = [m for m in container(job)["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"]]
    data = resources["ConfigMap", volume["configMap"]["name"]]["data"]
    local = tmp_path / path.name
    local.write_text(data[path.name])
    return load_config(local, overrides)


def test_the_runs(run: tuple[str, Rendered]) -> None:
    assert set(RUNS) == {"rcsd", "opsd"}
    name, resources = run
    validate(resources)
    assert {r["metadata"].get("namespace") for r in resources.values()} == {f"train-{name}"}


def test_torchrun_matches_the_job(run: tuple[str, Rendered]) -> None:
    _, resources = run
    job = resources["Job", "rcsd-trainer"]
    spec = job["spec"]
    trainer = container(job)
    flags = _flags(trainer["args"])
    assert trainer["command"] == ["torchrun"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(flags["nnodes"]), "every node at once"
    assert int(trainer["resources"]["limits"]["nvidia.com/gpu"]) == int(flags["nproc-per-node"])
    assert pod_spec(job)["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1

    index = env_of(trainer)["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert flags["node-rank"] == "$(NODE_RANK)"

    # Node 0 is the rendezvous: <job>-0.<subdomain>, a headless Service over the Job's pods.
    subdomain = pod_spec(job)["subdomain"]
    assert flags["master-addr"] == f"{job['metadata']['name']}-0.{subdomain}"
    service = resources["Service", subdomain]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert service["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert int(flags["master-port"]) in {p["port"] for p in service["ports"]}


def test_the_config_loads_and_finds_the_services(
    run: tuple[str, Rendered], gpu: Rendered, tmp_path: Path
) -> None:
    name, resources = run
    job = resources["Job", "rcsd-trainer"]
    config = _config(resources, job, tmp_path)
    assert config.method == name, "experiments/<name> trains with method <name>"
    assert config.rollout_engine == "hf", "no rollout server unless components/rollout-server"
    assert not config.progress, "no progress bars in a Job's log"
    for service, urls in (("teacher", config.services.teacher_urls), ("rubric", config.services.rubric_urls)):
        (url,) = [urlsplit(u) for u in urls]
        host, namespace, svc = (url.hostname or "").split(".")
        target = gpu["Service", host]
        assert (namespace, svc) == (target["metadata"]["namespace"], "svc"), url
        assert url.port == target["spec"]["ports"][0]["port"]
        assert target["spec"].get("clusterIP") != "None", f"{service}: the balanced ClusterIP Service"
    key = env_of(container(job))[config.services.api_key_env]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "rcsd-api-key", "key": "api-key"}, (
        "the services' key, copied to the run's namespace"
    )

    # The run folder survives a retried pod: it is on the run's volume.
    mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
    runs_mount = mounts[str(Path(config.output_dir).parent)]
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == runs_mount["name"]]
    claim = resources["PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes write it"


def test_the_trainer_runs_the_services_image(run: tuple[str, Rendered], gpu: Rendered) -> None:
    _, resources = run
    (service_image,) = {container(gpu["Deployment", f"rcsd-{s}"])["image"] for s in ("teacher", "rubric")}
    assert container(resources["Job", "rcsd-trainer"])["image"] == service_image


def test_rollout_servers_one_per_rank(tmp_path: Path, gpu: Rendered) -> None:
    """components/rollout-server: a vLLM server per rank, at the URL the rank uses, seeing its adapters."""
    resources = render_with_components(tmp_path, "experiments/rcsd", ["rollout-server"])
    validate(resources)
    job = resources["Job", "rcsd-trainer"]
    flags = _flags(container(job)["args"])
    world_size = int(flags["nnodes"]) * int(flags["nproc-per-node"])
    config = _config(resources, job, tmp_path)
    assert config.rollout_engine == "vllm"

    servers = resources["StatefulSet", "rcsd-rollout"]
    assert servers["spec"]["replicas"] == world_size == len(config.services.rollout_urls)
    service_name = servers["spec"]["serviceName"]
    service = resources["Service", service_name]["spec"]
    assert service["clusterIP"] == "None"
    (port,) = service["ports"]
    assert config.services.rollout_urls == [
        f"http://rcsd-rollout-{rank}.{service_name}:{port['port']}" for rank in range(world_size)
    ]

    vllm = container(servers)
    assert vllm["command"] == ["vllm", "serve"] and vllm["args"][0] == config.model
    rank = re.search(r"--max-lora-rank=(\d+)", " ".join(vllm["args"]))
    assert rank is not None and int(rank.group(1)) >= config.lora.r
    assert env_of(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env_of(vllm)["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "rcsd-api-key"
    assert vllm["image"] == container(job)["image"]
    # The trainer writes adapters under output_dir and names them by path: the same path on the server.
    runs_dir = str(Path(config.output_dir).parent)
    trainer_mount = {m["mountPath"]: m for m in container(job)["volumeMounts"]}[runs_dir]
    server_mount = {m["mountPath"]: m for m in vllm["volumeMounts"]}[runs_dir]
    assert server_mount.get("subPath") == trainer_mount.get("subPath")
    claim = {v["name"]: v for v in pod_spec(servers)["volumes"]}[server_mount["name"]]
    trainer_claim = {v["name"]: v for v in pod_spec(job)["volumes"]}[trainer_mount["name"]]
    assert claim["persistentVolumeClaim"] == trainer_claim["persistentVolumeClaim"]
