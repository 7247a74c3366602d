"""Kubernetes service-link variables never become settings.

A Service named `rcsd-teacher` makes Kubernetes put `RCSD_TEACHER_PORT=tcp://10.x.y.z:8001` into every
pod created after it (unless the pod sets `enableServiceLinks: false`): the name of the teacher's
`port` setting. The settings ignore such a value with a warning naming the variable (why ignoring
beats failing: rcsd/services/kit/settings.py). The acceptance test starts the real `rcsd serve`
process with the variable set and no port flag, and finds it on its default port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from rcsd.services.kit import settings as kit_settings
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings

SERVICES: dict[str, type[ServiceSettings]] = {"teacher": TeacherSettings, "rubric": RubricSettings}
# What Kubernetes injects for a Service named like each service (its ClusterIP, its port).
INJECTED = {"teacher": "tcp://10.0.0.1:8001", "rubric": "tcp://10.0.0.2:8002"}


def _prefix(name: str) -> str:
    return SERVICES[name].model_config["env_prefix"]


def _default_port(name: str) -> int:
    return SERVICES[name].model_fields["port"].default


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_an_injected_port_is_ignored_and_named(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(f"{_prefix(name)}PORT", INJECTED[name])
    monkeypatch.setenv(f"{_prefix(name)}MODEL", "m")
    kit_settings.log.addHandler(caplog.handler)  # also once `rcsd` logs stop propagating (serve)
    try:
        settings = SERVICES[name]()  # type: ignore[call-arg]  (model from the env)
    finally:
        kit_settings.log.removeHandler(caplog.handler)
    assert settings.port == _default_port(name)
    assert f"{_prefix(name)}PORT={INJECTED[name]}" in caplog.text


@pytest.mark.parametrize("value", ["tcp://[fd00::1]:8001", "udp://10.0.0.1:53", "sctp://10.1.2.3:9"])
def test_every_service_link_shape_is_ignored(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCSD_TEACHER_PORT", value)
    assert TeacherSettings(model="m").port == 8001


def test_a_port_the_operator_sets_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCSD_TEACHER_PORT", "9001")
    assert TeacherSettings(model="m").port == 9001
    monkeypatch.setenv("RCSD_TEACHER_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        TeacherSettings(model="m")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_setting_has_the_name_of_another_injected_variable(name: str) -> None:
    """Besides <SVC>_PORT, a Service injects <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT[_<NAME>] and
    <SVC>_PORT_<n>_<PROTO>[_ADDR|_PORT|_PROTO], whose values look like ordinary settings."""
    for field in SERVICES[name].model_fields:
        assert not field.startswith(("service_host", "service_port", "port_")), field


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve_command() -> list[str]:
    """The installed `rcsd` entry point, next to this interpreter."""
    script = Path(sys.executable).with_name("rcsd")
    assert script.is_file(), f"no rcsd entry point at {script}"
    return [str(script), "serve"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_a_service_with_an_injected_port_starts_on_its_default_port(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = _default_port(name)
    if not _free(port):
        pytest.skip(f"port {port} is in use on this machine: the test needs the service's default port")
    args = [name, "--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32"]
    if name == "rubric":
        args += ["--store-url", f"sqlite:///{tmp_path / 'rubrics.db'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(_prefix(name))}
    env[f"{_prefix(name)}PORT"] = INJECTED[name]
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*_serve_command(), *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"not ready on {port}:\n{log_path.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert f"ignoring {_prefix(name)}PORT={INJECTED[name]}" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
