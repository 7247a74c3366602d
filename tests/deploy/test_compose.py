"""docker-compose.yml: valid compose-spec, settings from the environment, commands the real CLI accepts.

No Docker engine is needed. The file is checked against the compose-spec JSON schema with
check-jsonschema (which ships the schema: offline). Its `${VAR:-default}` values are interpolated here
the way Compose does, from a chosen user environment, and each service's command and environment go
through `rcsd.services.cli.main` (the real parser and settings classes) with `serve` replaced by a
recorder, so nothing is loaded or started.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rcsd.loading.bundled import DEFAULT_MODEL_NAME
from rcsd.services import cli
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
HOME = "/home/rcsd"
IMAGE_MODEL = f"/opt/rcsd/models/{DEFAULT_MODEL_NAME}"  # RCSD_CACHE_DIR of deploy/Dockerfile.cpu
HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# compose service -> (what it serves, its settings class, its profile, its default model)
SERVICES: dict[str, tuple[str, type[ServiceSettings], str, str]] = {
    "teacher": ("teacher", TeacherSettings, "gpu", HUB_MODEL),
    "rubric": ("rubric", RubricSettings, "gpu", HUB_MODEL),
    "teacher-cpu": ("teacher", TeacherSettings, "cpu", IMAGE_MODEL),
    "rubric-cpu": ("rubric", RubricSettings, "cpu", IMAGE_MODEL),
}
# Settings that only make sense at one value inside the container; everything else a user can set.
CONTAINER_FIXED = {"HOST"}

# ${NAME}, ${NAME:-default}, ${NAME-default}; a default holding no `$` or braces, so nested ones
# expand from the inside out.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^${}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with compose's `${...}` variables replaced from `env` (`:-`: also when empty)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        given = env.get(name)
        if given is None or (operator == ":-" and given == ""):
            return default or ""
        return given

    while True:
        expanded = _VARIABLE.sub(one, value)
        if expanded == value:
            break
        value = expanded
    assert "${" not in value, f"unexpanded variable in {value!r}"
    return value.replace("$$", "$")


def container_env(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The environment the container gets: `NAME=value` entries, and bare `NAME`s only when set."""
    result = {}
    for entry in service.get("environment") or []:
        name, sep, value = entry.partition("=")
        if sep:
            result[name] = interpolate(value, env)
        elif name in env:
            result[name] = env[name]
    return result


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as `docker compose` reads it with an empty environment."""
    return interpolate(raw, {})


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str], dict[str, str]], ServiceSettings]:
    """Runs `rcsd <command>` through the real `cli.main` in `environment`; returns what `serve` got."""
    for name in list(os.environ):
        if name.startswith(("RCSD_", "PG")):
            monkeypatch.delenv(name)

    def run(command: list[str], environment: dict[str, str]) -> ServiceSettings:
        served: list[ServiceSettings] = []
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(cli, "serve", lambda settings, service: served.append(settings) or 0)
        cli.main(command)
        (settings,) = served
        return settings

    return run


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_file_matches_the_compose_spec() -> None:
    result = _check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("correct", "misspelled"),
    [("    environment:\n", "    enviroment:\n"), ("start_period: 10m", "start_perod: 10m")],
)
def test_schema_check_catches_a_misspelled_key(tmp_path: Path, correct: str, misspelled: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert correct in text
    mutated = tmp_path / "docker-compose.yml"
    mutated.write_text(text.replace(correct, misspelled, 1))
    result = _check_jsonschema(mutated)
    assert result.returncode != 0
    assert repr(misspelled.strip().rstrip(":").split(":")[0]) in result.stdout


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_defaults_parse_with_the_real_cli(compose: dict[str, Any], run_cli: Any, name: str) -> None:
    served, settings_class, profile, model = SERVICES[name]
    service = compose["services"][name]
    assert service["profiles"] == [profile]
    assert service["command"] == ["serve", served], "settings come from the environment, never flags"
    settings = run_cli(service["command"], container_env(service, {}))

    assert isinstance(settings, settings_class)
    assert settings.backend == "vllm"
    assert settings.model == model
    assert settings.host == "0.0.0.0", "inside a container the service must listen beyond loopback"
    assert settings.api_key is None, "the key is passed on from the host, never written in the file"
    assert (settings.tensor_parallel_size, settings.pipeline_parallel_size) == (1, 1)

    ((host_ip, host_port, container_port),) = [port.rsplit(":", 2) for port in service["ports"]]
    assert int(container_port) == settings.port == settings_class.model_fields["port"].default
    assert host_port == container_port
    assert host_ip == "127.0.0.1", "all interfaces must be an explicit opt-in (the API key is optional)"
    assert container_env(service, {})["RCSD_HEALTH_PORT"] == str(settings.port)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_setting_a_user_sets_reaches_the_service(raw: dict[str, Any], name: str) -> None:
    """No value in the file shadows the user's: each RCSD_ variable is passed on or defaults to it."""
    served, settings_class, _, _ = SERVICES[name]
    service = raw["services"][name]
    prefix = settings_class.model_config["env_prefix"]
    fields = {field.upper() for field in settings_class.model_fields}
    names = [entry.partition("=")[0] for entry in service["environment"]]
    ours = [key for key in names if key.startswith(prefix)]
    assert {f"{prefix}API_KEY", f"{prefix}MODEL", f"{prefix}REVISION"} <= set(ours)
    for key in ours:
        assert key.removeprefix(prefix) in fields, f"{key} is no {served} setting"
        if key.removeprefix(prefix) in CONTAINER_FIXED:
            continue
        assert container_env(service, {key: "users-value"})[key] == "users-value", f"{key} is shadowed"


def test_user_environment_reaches_the_settings(raw: dict[str, Any], run_cli: Any) -> None:
    user = {
        "RCSD_TEACHER_MODEL": "/models/big",
        "RCSD_RUBRIC_MODEL": "/models/writer",
        "RCSD_TEACHER_API_KEY": "teacher-key",
        "RCSD_TEACHER_TENSOR_PARALLEL_SIZE": "2",
        "RCSD_TEACHER_GPU_MEMORY_UTILIZATION": "0.5",
        "RCSD_RUBRIC_STORE_URL": "postgresql://rcsd@db.internal:5432/rcsd",
    }
    services = interpolate(raw, user)["services"]
    teacher = run_cli(services["teacher"]["command"], container_env(raw["services"]["teacher"], user))
    assert teacher.model == "/models/big"
    assert teacher.api_key is not None and teacher.api_key.get_secret_value() == "teacher-key"
    assert teacher.tensor_parallel_size == 2
    assert teacher.gpu_memory_utilization == 0.5

    rubric = run_cli(services["rubric"]["command"], container_env(raw["services"]["rubric"], user))
    assert rubric.model == "/models/writer"
    assert rubric.api_key is None, "the teacher's key is not the rubric's"
    assert isinstance(rubric, RubricSettings) and rubric.store_url == user["RCSD_RUBRIC_STORE_URL"]


@pytest.mark.parametrize("name", ["rubric", "rubric-cpu"])
def test_rubric_store_is_the_postgres_service(compose: dict[str, Any], run_cli: Any, name: str) -> None:
    services = compose["services"]
    rubric = services[name]
    environment = container_env(rubric, {})
    settings = run_cli(rubric["command"], environment)
    assert isinstance(settings, RubricSettings)
    url = urlsplit(settings.store_url)
    postgres = services["postgres"]
    database = postgres["environment"]

    assert url.scheme == "postgresql"
    assert url.hostname == "postgres" and url.hostname in services
    assert url.username == database["POSTGRES_USER"]
    assert url.path == f"/{database['POSTGRES_DB']}"
    assert url.password is None, "the password comes from PGPASSWORD, out of the URL"
    assert environment["PGPASSWORD"] == database["POSTGRES_PASSWORD"]
    assert rubric["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(rubric["profiles"]) <= set(postgres["profiles"]), "the store runs in the rubric's profile"


def test_postgres(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    chosen = interpolate(raw, {"RCSD_POSTGRES_IMAGE": "mirror.internal/postgres:16"})["services"]["postgres"]
    assert chosen["image"] == "mirror.internal/postgres:16", "a mirror's or a local image (compose_check.sh)"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ports" not in postgres
    volume, _, target = postgres["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data"
    assert volume in compose["volumes"], "a named volume, so the store outlives the container"


@pytest.mark.parametrize(("name", "gpus"), [("teacher", "0"), ("rubric", "1")])
def test_gpu_services(raw: dict[str, Any], compose: dict[str, Any], name: str, gpus: str) -> None:
    service = compose["services"][name]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["device_ids"] == [gpus]
    variable = f"RCSD_{name.upper()}_GPUS"
    chosen = interpolate(raw, {variable: "2,3"})["services"][name]
    assert chosen["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["2,3"]

    assert f"~/.cache/huggingface:{HOME}/.cache/huggingface" in service["volumes"]
    for volume in service["volumes"]:
        source = volume.partition(":")[0]
        assert source.startswith(("~", "/", ".")) or source in compose["volumes"], f"{source} undeclared"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["build"]["args"] == {"RCSD_UID": "1000", "RCSD_GID": "1000"}


@pytest.mark.parametrize("name", ["teacher-cpu", "rubric-cpu"])
def test_cpu_services(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert "deploy" not in service, "no GPU reservation: the cpu profile runs where there is none"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    twin = name.removesuffix("-cpu")
    assert service["networks"]["default"]["aliases"] == [twin], "the trainer finds either under one name"
    assert service["ports"] == compose["services"][twin]["ports"]


def test_trainer_runs_the_cpu_demo_config(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    trainer = compose["services"]["trainer"]
    assert trainer["profiles"] == ["trainer"]
    assert trainer["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert trainer["restart"] == "no", "a finished run must not start again"
    command = trainer["command"]
    assert command[0] == "train"
    config = ROOT / Path(command[1]).relative_to("/opt/rcsd")  # deploy/Dockerfile.cpu copies trainer/ there
    assert config == ROOT / "trainer/rcsd/trainer/configs/smollm2_cpu.yaml"

    overrides = dict(item.split("=", 1) for item in command[2:])
    hosts = {
        urlsplit(url).hostname
        for key in ("teacher_urls", "rubric_urls")
        for url in yaml.safe_load(overrides[f"services.{key}"])
    }
    aliases = {
        alias
        for service in compose["services"].values()
        for alias in service.get("networks", {}).get("default", {}).get("aliases", [])
    }
    assert hosts == {"teacher", "rubric"} and hosts <= aliases and hosts <= set(compose["services"])
    assert overrides["output_dir"].startswith("/runs/")
    assert overrides["steps"] == "20"
    assert any(volume.endswith(":/runs") for volume in trainer["volumes"])

    config_module = pytest.importorskip("rcsd.trainer.config")
    if not config.is_file():
        pytest.skip(f"{config} is not written yet")
    loaded = config_module.load_config(config, command[2:])
    assert loaded.services.teacher_urls == ["http://teacher:8001"]
    assert loaded.output_dir == "/runs/compose"
    assert loaded.steps == 20
    one_step = interpolate(raw, {"RCSD_TRAINER_STEPS": "1"})["services"]["trainer"]["command"]
    assert config_module.load_config(config, one_step[2:]).steps == 1


def _variables(raw_text: str) -> set[str]:
    """Every variable the compose file reads from the user: interpolated or passed on bare."""
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", raw_text))
    bare = set(re.findall(r"^\s*- ([A-Z][A-Z0-9_]*)\s*(?:#.*)?$", raw_text, flags=re.MULTILINE))
    return interpolated | bare


def test_env_example_documents_every_variable() -> None:
    example = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    used = _variables(COMPOSE_FILE.read_text())
    assert used - documented == set(), "variables the compose file reads but .env.example never names"
    compose_own = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}  # read by Compose itself
    assert documented - used - compose_own == set(), ".env.example names what nothing reads"
    for line in example.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value.strip(), f"{name} is set empty: an empty API key would lock every client out"


def test_env_file_is_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, timeout=30)
    kept = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT, timeout=30)
    assert (ignored.returncode, kept.returncode) == (0, 1)


def _compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="no `docker compose` CLI on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    profiles = [arg for profile in ("cpu", "gpu", "trainer") for arg in ("--profile", profile)]
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *profiles, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_compose_v1_reads_the_file(raw: dict[str, Any]) -> None:
    """docker-compose 1.29 (Debian's, which deploy/compose_check.sh runs) refuses a top-level `name`
    and ends a nested default `${A:-${B:-x}}` at the first `}` (the value gets a stray brace)."""
    assert "name" not in raw, "the project's name is COMPOSE_PROJECT_NAME in .env"
    assert not re.search(r"\$\{[^}]*\$\{", COMPOSE_FILE.read_text()), "a nested default"
    if shutil.which("docker-compose") is None:
        pytest.skip("no docker-compose (v1) on this machine")
    profiles = [arg for profile in ("cpu", "gpu", "trainer") for arg in ("--profile", profile)]
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), *profiles, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
    )
    assert result.returncode == 0, result.stderr


def test_compose_check_sets_only_what_the_file_reads() -> None:
    """deploy/compose_check.sh: valid bash, run by `make compose-check` and CI, every variable it sets read."""
    script = ROOT / "deploy" / "compose_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    assert re.search(
        r"^compose-check:.*\n\tbash deploy/compose_check\.sh", (ROOT / "Makefile").read_text(), re.M
    )
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("deploy/compose_check.sh")
    written = set(
        re.findall(r"^((?:RCSD|POSTGRES|COMPOSE)_[A-Z_]+)=", script.read_text(), flags=re.MULTILINE)
    )
    used = _variables(COMPOSE_FILE.read_text()) | {"COMPOSE_PROFILES"}
    assert {"RCSD_API_KEY", "RCSD_TEACHER_API_KEY", "RCSD_RUBRIC_API_KEY", "RCSD_BIND_ADDRESS"} <= written
    assert written - used == set(), "the check sets a variable that docker-compose.yml never reads"
