"""Bounded work: body and field limits, work stopped when its client goes away, admission by tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from rcsd.client.protocol.limits import MAX_QUESTION_CHARS, MAX_RATIONALE_CHARS, MAX_REFERENCE_CHARS
from rcsd.recipes.launch import ServiceProcess
from tests.services.teacher.payloads import group

SMALL = group("none", [[1, 2, 3]])


def _metric(server: ServiceProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


async def _until(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("question", MAX_QUESTION_CHARS),
        ("reference_answer", MAX_REFERENCE_CHARS),
        ("rationale", MAX_RATIONALE_CHARS),
    ],
)
def test_every_text_field_has_a_length_limit(teacher_servers, field, limit):
    body = group("reference", [[1]], **{field: "x" * (limit + 1)})
    r = httpx.post(f"{teacher_servers['hf'].url}/teacher_logprobs", json=body, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    assert str(limit) in r.json()["error"]["message"]


async def test_a_huge_body_is_refused_while_a_small_request_is_answered(teacher_servers):
    """A 20 MB question streamed without Content-Length: counted as it arrives and refused (413);
    a small request sent while it uploads is answered first, not after the big one is parsed."""
    server = teacher_servers["hf"]
    small_answered = asyncio.Event()

    async def huge_body() -> AsyncIterator[bytes]:
        yield b'{"context_mode": "none", "completions": [[1]], "question": "'
        for i in range(20):
            if i == 2:  # mid-upload: hold the rest until the small request has its answer
                await asyncio.wait_for(small_answered.wait(), 60)
            yield b"a" * 1_000_000
        yield b'"}'

    order: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

        async def big() -> httpx.Response:
            r = await client.post(
                "/teacher_logprobs", content=huge_body(), headers={"content-type": "application/json"}
            )
            order.append("big")
            return r

        big_task = asyncio.create_task(big())
        small = await client.post("/teacher_logprobs", json=SMALL)
        order.append("small")
        small_answered.set()
        refused = await big_task
    assert small.status_code == 200, small.text
    assert refused.status_code == 413 and "max_body_bytes 16777216" in refused.json()["error"]["message"]
    assert refused.headers["x-request-id"] and order == ["small", "big"]
    declared = httpx.post(
        f"{server.url}/teacher_logprobs",
        content=b"x" * (16 * 2**20 + 1),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert declared.status_code == 413 and "Content-Length" in declared.json()["error"]["message"]


async def test_a_disconnected_request_frees_its_engine_work(teacher):
    """A client that times out closes the connection; the work is cancelled (hf: the worker stops
    between forwards; vLLM: its requests are aborted) and the slot is given back long before the
    work would have finished (compared with a quarter of it)."""
    server = teacher
    heavy = group("none", [[5] * 2000] * 32, top_k=32)
    quarter = group("none", [[5] * 2000] * 8, top_k=32)
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        started = time.monotonic()
        assert (await client.post("/teacher_logprobs", json=quarter)).status_code == 200
        quarter_s = time.monotonic() - started
        cancelled_before = _metric(server, "rcsd_cancelled_total")
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/teacher_logprobs", json=heavy, timeout=min(0.5, quarter_s / 2))
        await _until(lambda: _metric(server, "rcsd_cancelled_total") == cancelled_before + 1)
        await _until(lambda: _metric(server, "rcsd_in_flight") == 0)
        freed_s = time.monotonic() - started
        assert (await client.post("/teacher_logprobs", json=SMALL)).status_code == 200
    # the whole of it would take about 4 x quarter_s; freed well before half of that
    assert freed_s < 2 * quarter_s, (freed_s, quarter_s)
    assert _metric(server, "rcsd_tokens_in_flight") == 0


async def test_admission_by_tokens(tiny_model_dir, tmp_path):
    """Budget 15k tokens: a 9.6k-token request runs, a second one waits for it, a small one passes
    the waiting one, and a request over the whole budget is refused at once naming the limit."""
    args = ["--model", str(tiny_model_dir), "--dtype", "float32", "--max-tokens-in-flight", "15000"]
    server = ServiceProcess("teacher", args, tmp_path).start()
    big = group("none", [[5] * 1200] * 8)
    order: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:

            async def post(name: str, body: dict) -> httpx.Response:
                r = await client.post("/teacher_logprobs", json=body)
                order.append(name)
                return r

            too_big = await client.post("/teacher_logprobs", json=group("none", [[5] * 2000] * 8))
            first = asyncio.create_task(post("first", big))
            await _until(lambda: _metric(server, "rcsd_in_flight") == 1)
            second = asyncio.create_task(post("second", big))
            await _until(lambda: _metric(server, "rcsd_queue_depth") == 1)
            small = asyncio.create_task(post("small", SMALL))
            responses = await asyncio.gather(first, second, small)
    finally:
        server.stop()
    assert too_big.status_code == 413, too_big.text
    assert "max_tokens_in_flight 15000" in too_big.json()["error"]["message"]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert order.index("small") < order.index("second"), order


def test_info_names_the_body_and_token_limits(teacher_servers):
    limits = httpx.get(f"{teacher_servers['hf'].url}/v1/info").json()["limits"]
    assert limits["max_body_bytes"] == 16 * 2**20 and limits["max_tokens_in_flight"] == 1_048_576
