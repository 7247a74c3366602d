"""Retry policy against a real loopback server: what is retried, how long it waits, when it stops."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

import rcsd.client._base as client_base
from rcsd.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncTeacherClient,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
    ServiceUnavailableError,
    TeacherClient,
    TeacherRequest,
)
from rcsd.recipes.launch import free_port

REQUEST = TeacherRequest(question="2+2?", context_mode="none", completions=[[5, 6, 7]])


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the clients wait between attempts, recorded instead of slept."""
    delays: list[float] = []
    clock = SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=delays.append)
    monkeypatch.setattr(client_base, "time", clock)
    real_sleep, test_thread = asyncio.sleep, threading.current_thread()

    async def recorded(delay: float, *args: object) -> object:
        if threading.current_thread() is not test_thread:  # the fake service's own loop
            return await real_sleep(delay, *args)
        delays.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(client_base.asyncio, "sleep", recorded)
    return delays


def test_retry_after_is_honoured(start_replica, slept):
    replica = start_replica()
    replica.state.fail_next(503, retry_after=1)
    with TeacherClient(replica.url) as client:
        response = client.score(REQUEST)
    assert response.completions[0].token_ids.tolist() == [5, 6, 7]
    assert slept == [1.0]
    assert replica.state.hits["/v1/teacher_logprobs"] == 1


async def test_429_retry_after_is_honoured_async(start_replica, slept):
    replica = start_replica()
    replica.state.fail_next(429, retry_after=0.6, times=2)
    async with AsyncTeacherClient(replica.url) as client:
        await client.score(REQUEST)
    assert slept == [0.6, 0.6]


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_retried_statuses_end_in_success(start_replica, status):
    replica = start_replica()
    replica.state.fail_next(status, retry_after=0, times=2)
    with TeacherClient(replica.url) as client:
        client.score(REQUEST)
    assert replica.state.hits["/v1/teacher_logprobs"] == 1


def test_retries_stop_at_the_deadline(start_replica):
    replica = start_replica()
    replica.state.fail_next(503, times=1000)  # no Retry-After: exponential backoff
    with TeacherClient(replica.url, deadline=2.0) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as caught:
            client.score(REQUEST)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert caught.value.attempts >= 3
    assert "scripted 503 for this test" in str(caught.value)
    assert "gave up after" in str(caught.value)


def test_retries_stop_at_max_retries(start_replica):
    replica = start_replica()
    replica.state.fail_next(500, retry_after=0, times=1000)
    with TeacherClient(replica.url, max_retries=2) as client, pytest.raises(InternalServerError) as caught:
        client.score(REQUEST)
    assert caught.value.attempts == 3
    assert len([p for p, _ in replica.state.seen if p == "/v1/teacher_logprobs"]) == 3


def test_4xx_is_not_retried_and_says_what_the_server_said(start_replica):
    replica = start_replica()
    replica.state.fail_next(422, retry_after=0, times=5)
    with TeacherClient(replica.url) as client, pytest.raises(BadRequestError) as caught:
        client.score(REQUEST, request_id="req-422")
    error = caught.value
    assert [p for p, _ in replica.state.seen].count("/v1/teacher_logprobs") == 1
    assert error.status_code == 422 and error.field == "completions" and error.request_id == "req-422"
    assert error.server_message == "scripted 422 for this test"
    assert "scripted 422 for this test" in str(error) and "completions" in str(error)


def test_schema_error_from_the_server_names_the_field(start_replica):
    replica = start_replica(limits={"max_top_k": 100})
    invalid = REQUEST.model_copy(update={"top_k": -1})  # skips local validation, as a buggy caller might
    with TeacherClient(replica.url) as client, pytest.raises(BadRequestError) as caught:
        client.score(invalid)
    assert caught.value.field == "top_k" and "greater than or equal to 0" in caught.value.message


def test_wrong_api_key_is_401_and_not_retried(start_replica):
    replica = start_replica(api_key="right")
    with TeacherClient(replica.url, api_key="wrong") as client, pytest.raises(AuthenticationError) as caught:
        client.score(REQUEST)
    assert "missing or wrong bearer API key" in str(caught.value)
    assert len(replica.state.seen) == 1  # not even /v1/info went through twice
    with TeacherClient(replica.url, api_key="right") as client:
        client.score(REQUEST)


def test_api_key_from_the_environment(start_replica, monkeypatch):
    replica = start_replica(api_key="from-env")
    monkeypatch.setenv("RCSD_API_KEY", "from-env")
    with TeacherClient(replica.url) as client:
        client.score(REQUEST)


def test_request_id_is_kept_across_retries(start_replica):
    replica = start_replica()
    replica.state.fail_next(503, retry_after=0, times=2)
    with TeacherClient(replica.url) as client:
        client.info()
        client.score(REQUEST, request_id="abc-123")
        client.score(REQUEST)
    ids = [rid for path, rid in replica.state.seen if path == "/v1/teacher_logprobs"]
    assert ids[:3] == ["abc-123"] * 3
    assert ids[3] != "abc-123" and len(ids) == 4


def test_connection_refused_retries_until_the_deadline():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    with TeacherClient(url, deadline=1.5) as client:
        started = time.monotonic()
        with pytest.raises(APIConnectionError) as caught:
            client.info()
        elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 1.5, elapsed
    assert caught.value.attempts >= 2 and "ConnectError" in str(caught.value)


async def test_a_slow_post_is_not_sent_again_by_default(start_replica):
    """A read timeout means the server has the request and may still be computing it."""
    replica = start_replica(delay_s=2.0)
    async with AsyncTeacherClient(replica.url, timeout=0.3, deadline=1.5) as client:
        await client.info()  # not delayed: only work requests are slow
        with pytest.raises(APITimeoutError) as caught:
            await client.score(REQUEST)
    assert caught.value.attempts == 1 and "ReadTimeout" in str(caught.value)
    assert [path for path, _ in replica.state.seen].count("/v1/teacher_logprobs") == 1


async def test_opted_in_read_timeout_retries_stop_at_the_deadline(start_replica):
    replica = start_replica(delay_s=2.0)
    async with AsyncTeacherClient(replica.url, timeout=0.3, deadline=1.5, retry_read_timeouts=True) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as caught:
            await client.score(REQUEST)
        elapsed = time.monotonic() - started
    assert elapsed < 1.7, elapsed
    assert caught.value.attempts >= 2 and "ReadTimeout" in str(caught.value)


def test_per_call_timeout_overrides_the_client_default(start_replica):
    replica = start_replica(delay_s=0.5)
    with TeacherClient(replica.url, timeout=0.1, deadline=1.0) as client:
        client.score(REQUEST, timeout=2.0)
        with pytest.raises(APITimeoutError):
            client.score(REQUEST, timeout=0.1)


def test_rate_limit_error_when_it_never_clears(start_replica):
    replica = start_replica()
    replica.state.fail_next(429, retry_after=0.2, times=1000)
    with TeacherClient(replica.url, deadline=1.0) as client, pytest.raises(RateLimitError) as caught:
        client.score(REQUEST)
    assert caught.value.status_code == 429
