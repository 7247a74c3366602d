"""Health, readiness, info, metrics, auth, request ids, admission control, graceful stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from rcsd.recipes.launch import ServiceProcess
from rcsd.services.engines.identity import tokenizer_hash
from tests.services.teacher.payloads import group

KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A teacher with an API key and room for one request at a time, none waiting."""
    server = ServiceProcess(
        "teacher",
        [
            "--model",
            str(tiny_model_dir),
            "--api-key",
            KEY,
            "--max-concurrency",
            "1",
            "--max-queue",
            "0",
            "--retry-after-s",
            "2",
        ],
        tmp_path_factory.mktemp("guarded"),
    ).start()
    yield server
    # uvicorn re-raises SIGTERM after a clean shutdown, so -15 is a clean exit too
    assert server.stop() in (0, -15), server.logs()
    assert "Application shutdown complete" in server.logs()


def test_health_and_ready_need_no_key(guarded):
    assert httpx.get(f"{guarded.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{guarded.url}/ready").json() == {"status": "ok"}


def test_everything_else_needs_the_key(guarded):
    for path in ("/v1/info", "/metrics", "/openapi.json"):
        r = httpx.get(f"{guarded.url}{path}")
        assert r.status_code == 401, path
        assert r.json()["error"]["field"] == "authorization"
        assert httpx.get(f"{guarded.url}{path}", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{guarded.url}{path}", headers=AUTH).status_code == 200, path
    r = httpx.post(f"{guarded.url}/teacher_logprobs", json=group("none", [[1]]))
    assert r.status_code == 401


def test_info_describes_model_and_limits(guarded, tiny_model_dir):
    info = httpx.get(f"{guarded.url}/v1/info", headers=AUTH).json()
    assert info["service"] == "teacher" and info["backend"] == "hf"
    assert info["model"]["vocab_size"] == 1000
    assert info["model"]["max_model_len"] == 4096
    assert info["model"]["tokenizer_hash"] == tokenizer_hash(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert set(info["limits"]) >= {
        "max_top_k",
        "max_completions_per_group",
        "max_groups_per_batch",
        "max_completion_tokens_per_request",
        "max_model_len",
    }


def test_request_id_is_echoed_or_made(guarded):
    r = httpx.get(f"{guarded.url}/health", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(f"{guarded.url}/health").headers["x-request-id"]) == 32


def test_metrics_count_requests_and_tokens(guarded):
    r = httpx.post(f"{guarded.url}/teacher_logprobs", json=group("none", [[1, 2, 3], [4, 5]]), headers=AUTH)
    assert r.status_code == 200
    text = httpx.get(f"{guarded.url}/metrics", headers=AUTH).text
    assert 'rcsd_requests_total{route="/teacher_logprobs",status="200"}' in text
    tokens = [line for line in text.splitlines() if line.startswith("rcsd_tokens_scored_total")]
    assert tokens and float(tokens[0].split()[-1]) >= 5
    assert "rcsd_queue_depth" in text and "rcsd_request_seconds_bucket" in text


def test_full_queue_answers_429_with_retry_after(guarded):
    body = group("none", [[3] * 1500] * 8, top_k=32)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
            return await asyncio.gather(
                *(client.post(f"{guarded.url}/teacher_logprobs", json=body) for _ in range(4))
            )

    statuses = [r.status_code for r in asyncio.run(fire())]
    assert 200 in statuses and 429 in statuses, statuses
    refused = next(r for r in asyncio.run(fire()) if r.status_code == 429)
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["type"] == "overloaded"


@pytest.mark.vllm
def test_a_dead_engine_makes_the_replica_unready_not_500(tiny_model_dir, tmp_path):
    """Kill the vLLM engine core under a running service: it answers 503, /ready and /health say so."""
    import psutil

    server = ServiceProcess(
        "teacher", ["--backend", "vllm", "--model", str(tiny_model_dir), "--dtype", "float32"], tmp_path
    ).start()
    try:
        assert (
            httpx.post(f"{server.url}/teacher_logprobs", json=group("none", [[1, 2]]), timeout=60).status_code
            == 200
        )
        for child in psutil.Process(server.proc.pid).children(recursive=True):
            child.kill()
        statuses = set()
        for _ in range(50):  # the front end notices the dead core within a moment
            r = httpx.post(f"{server.url}/teacher_logprobs", json=group("none", [[1, 2]]), timeout=60)
            statuses.add(r.status_code)
            if httpx.get(f"{server.url}/ready").status_code == 503:
                break
            time.sleep(0.2)
        assert httpx.get(f"{server.url}/ready").json() == {"status": "unavailable"}
        r = httpx.post(f"{server.url}/teacher_logprobs", json=group("none", [[1, 2]]), timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable"
        assert statuses <= {200, 503}, statuses
        # a dead engine core never comes back: liveness fails too, so the orchestrator restarts the pod
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "unavailable"}
    finally:
        server.stop()
