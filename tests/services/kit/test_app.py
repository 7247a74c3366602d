"""The shared app shell: a failed engine load shows (and ends the process), a 500 is still a request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from rcsd.recipes.launch import ServiceProcess
from rcsd.services.cli import EXIT_LOAD_FAILED
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.app import LoadedService, create_service_app
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.settings import ServiceSettings


class _Settings(ServiceSettings):
    pass


def _app(load, routers: list[APIRouter] | None = None) -> FastAPI:
    return create_service_app(name="teacher", settings=_Settings(model="m"), load=load, routers=routers or [])


async def _never_loads(
    settings: ServiceSettings, metrics: ServiceMetrics, admission: Admission
) -> LoadedService:
    raise OSError("no config.json in /nowhere")


def test_a_failed_load_turns_health_and_ready_to_failed():
    with TestClient(_app(_never_loads)) as client:
        for _ in range(100):
            if client.get("/ready").json()["status"] != "loading":
                break
            time.sleep(0.01)
        ready, health = client.get("/ready"), client.get("/health")
    assert (ready.status_code, ready.json()) == (503, {"status": "failed"})
    assert (health.status_code, health.json()) == (503, {"status": "failed"})


def test_a_500_carries_a_request_id_and_is_counted_and_logged(caplog):
    bug = APIRouter()

    @bug.get("/bug")
    async def _bug() -> None:
        raise RuntimeError("our bug")

    with caplog.at_level("INFO", logger="rcsd"), TestClient(_app(_never_loads, [bug])) as client:
        r = client.get("/bug", headers={"x-request-id": "req-500"})
        metrics = client.get("/metrics").text
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-500"
    assert r.json()["error"] == {
        "type": "internal_error",
        "message": "internal error: RuntimeError",
        "field": None,
        "request_id": "req-500",
        "param": None,
        "code": "internal_error",
    }
    assert 'rcsd_requests_total{route="/bug",status="500"} 1.0' in metrics
    logged = [rec for rec in caplog.records if rec.getMessage() == "request"]
    assert [rec.fields["status"] for rec in logged if rec.fields["path"] == "/bug"] == [500]


def test_a_service_whose_model_does_not_load_exits_non_zero_with_the_error_logged(tmp_path: Path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    server = ServiceProcess("teacher", ["--model", str(broken)], tmp_path)
    with pytest.raises(RuntimeError, match=f"exited with {EXIT_LOAD_FAILED}"):
        server.start(timeout_s=60)
    logs = server.logs()
    assert "engine failed to load" in logs and "no-such-architecture" in logs, logs
    with pytest.raises(httpx.ConnectError):  # nothing is left listening
        httpx.get(f"{server.url}/health")
