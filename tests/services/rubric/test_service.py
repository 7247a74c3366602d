"""POST /rubrics on real service processes: schema-valid output, the store, concurrency, bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rcsd.client import BatchError, RubricClient
from rcsd.client.protocol import (
    Criterion,
    RubricBatchResponse,
    RubricBounds,
    RubricRequest,
    RubricResponse,
    rubric_problems,
)
from rcsd.recipes.launch import ServiceProcess
from tests.reliability.faults import assert_complete, stored_rubrics

# Small bounds keep a random-weight model's maximal-length strings short enough to test quickly.
BOUNDS = {"min_criteria": 2, "max_criteria": 2}


def ask(question: str, **extra: object) -> dict:
    return {"question": question, "reference_answer": "42", "bounds": BOUNDS, "max_tokens": 1300, **extra}


def rubric_server(model: Path, store_url: str, log_dir: Path, backend: str = "hf") -> ServiceProcess:
    args = ["--backend", backend, "--model", str(model), "--dtype", "float32", "--store-url", store_url]
    return ServiceProcess("rubric", args, log_dir)


def generated_count(server: ServiceProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('rcsd_rubrics_total{source="generated"}'):
            return float(line.split()[-1])
    return 0.0


def gauge(server: ServiceProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    return 0.0


THREE = {"min_criteria": 3, "max_criteria": 3}
TWO_SCHEMAS = [
    ask("Question 0?"),
    ask("Question 1?"),
    ask("Question 2?", bounds=THREE),
    ask("Question 3?", bounds=THREE),
]


def two_schema_batch_in_flight(
    server: ServiceProcess, generated_before: int
) -> tuple[threading.Thread, list]:
    """Sends a batch of two bounds (two JSON schemas, so the engine decodes the 2-criteria pair, stores
    it, then the 3-criteria pair: ~3 s on the tiny model) and returns once the first pair is stored
    and the rest still decoding: the sender thread, and the list its answer or transport error lands in."""
    answered: list[object] = []

    def send() -> None:
        try:
            answered.append(
                httpx.post(f"{server.url}/rubrics/batch", json={"requests": TWO_SCHEMAS}, timeout=300)
            )
        except httpx.HTTPError as exc:  # the server went away under it
            answered.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 240
    while not (generated_count(server) >= generated_before + 2 and gauge(server, "rcsd_in_flight") >= 1):
        assert sender.is_alive() and time.monotonic() < deadline, "the batch ended before it was interrupted"
        time.sleep(0.05)
    return sender, answered


def assert_valid(body: dict) -> RubricResponse:
    rubric = RubricResponse.model_validate(body)
    assert rubric_problems(rubric.criteria, RubricBounds(**BOUNDS)) == []
    assert any(c.weight == -1 for c in rubric.criteria)
    return rubric


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("rubric-hf")
    process = rubric_server(tiny_model_dir, f"sqlite:///{folder / 'rubrics.db'}", folder).start()
    yield process
    process.stop()


def test_generated_rubric_fits_schema_and_is_stored(server):
    first = httpx.post(f"{server.url}/rubrics", json=ask("Why is the sky blue?"), timeout=300)
    assert first.status_code == 200, first.text
    rubric = assert_valid(first.json())
    assert not rubric.cached and rubric.attempts >= 1
    assert rubric.template_version == "rubric-v2" and rubric.model
    again = httpx.post(f"{server.url}/rubrics", json=ask("Why is the sky blue?"), timeout=60).json()
    assert again["cached"] and again["attempts"] == 0
    assert again["rubric_id"] == rubric.rubric_id and again["criteria"] == first.json()["criteria"]
    fetched = httpx.get(f"{server.url}/rubrics/{rubric.rubric_id}").json()
    assert fetched["criteria"] == first.json()["criteria"] and fetched["cached"]


def test_batch_keeps_order_and_generates_identical_requests_once(server):
    before = generated_count(server)
    requests = [ask("Why is the sky blue?"), ask("What is entropy?"), ask("What is entropy?")]
    r = httpx.post(f"{server.url}/rubrics/batch", json={"requests": requests}, timeout=300)
    assert r.status_code == 200, r.text
    results = [assert_valid(x["result"]) for x in r.json()["results"]]
    assert results[0].cached  # stored by the test above
    assert results[1].rubric_id == results[2].rubric_id
    assert generated_count(server) - before == 1


def test_concurrent_identical_requests_generate_once(server):
    before = generated_count(server)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(
                *(client.post(f"{server.url}/rubrics", json=ask("Define momentum.")) for _ in range(5))
            )

    responses = asyncio.run(fire())
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["rubric_id"] for r in responses}) == 1
    assert generated_count(server) - before == 1


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"question": ""}, "question", "at least 1 character"),
        ({"question": "   "}, "body", "blank"),
        ({"question": "x" * 20_001}, "question", "20000"),
        ({"question": "q", "bounds": {"min_criteria": 10, "max_criteria": 5}}, "bounds", "must not exceed"),
        ({"question": "q", "bounds": {"min_criteria": 3, "max_criteria": 1000}}, "bounds.max_criteria", "50"),
        ({"question": "q", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"question": "q", "top_p": 0}, "top_p", "greater than 0"),
        ({"question": "q", "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"question": "q", "top_k": -1}, "top_k", "greater than or equal to 0"),
        ({"question": "q", "max_tokens": 10**6}, "max_tokens", "8192"),
        ({"question": "q", "max_tokens": 8000}, "max_tokens", "max_model_len 4096"),
        ({"question": "q", "max_tokens": 100}, "max_tokens", "bounds.min_criteria 3"),  # the grammar's budget
        ({"question": "q", "colour": "red"}, "colour", "xtra"),
    ],
)
def test_bad_input_is_422_naming_the_field(server, body, field, text):
    r = httpx.post(f"{server.url}/rubrics", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert text in r.json()["error"]["message"]


def test_a_request_that_cannot_succeed_fails_alone_every_time(server):
    """A budget that cannot hold the grammar (max_tokens 16) and one over max_model_len fail before any work."""
    requests = [
        ask("Why is the sky blue?"),
        {"question": "What is a vector?", "bounds": {"min_criteria": 5, "max_criteria": 5}, "max_tokens": 16},
        {"question": "What is a tensor?", "max_tokens": 8000},
    ]
    for _ in range(2):  # deterministic seeds: the same item fails again, and the others still arrive
        r = httpx.post(f"{server.url}/rubrics/batch", json={"requests": requests}, timeout=300)
        assert r.status_code == 200, r.text
        items = RubricBatchResponse.model_validate_json(r.content).results
        assert [item.ok for item in items] == [True, False, False]
        assert_valid(items[0].result.model_dump())
        assert items[1].error.field == "requests.1.max_tokens" and items[1].error.status == 422
        assert "needs max_tokens >= " in items[1].error.message
        assert (
            items[2].error.field == "requests.2.max_tokens" and "max_model_len 4096" in items[2].error.message
        )
    with RubricClient(server.url) as client, pytest.raises(BatchError) as caught:
        client.generate_batch([RubricRequest.model_validate(body) for body in requests])
    assert sorted(caught.value.errors) == [1, 2] and list(caught.value.results) == [0]


def test_unknown_rubric_is_404_and_oversized_batch_is_422(server):
    r = httpx.get(f"{server.url}/rubrics/rub_000000000000000000000000")
    assert r.status_code == 404 and r.json()["error"]["field"] == "rubric_id"
    r = httpx.post(f"{server.url}/rubrics/batch", json={"requests": [{"question": "q"}] * 65})
    assert r.status_code == 422 and "max_batch 64" in r.json()["error"]["message"]


def test_store_survives_a_crash_mid_batch(tiny_model_dir, tmp_path):
    """SIGKILL while the batch generates, between its two commits. Afterwards the store holds whole
    rubrics only, exactly the committed ones, and a new process serves them."""
    store_url = f"sqlite:///{tmp_path / 'rubrics.db'}"
    first = rubric_server(tiny_model_dir, store_url, tmp_path).start()
    stored = httpx.post(f"{first.url}/rubrics", json=ask("What is a photon?"), timeout=300).json()
    sender, answered = two_schema_batch_in_flight(first, generated_before=1)
    first.kill()
    sender.join(timeout=30)
    assert isinstance(answered[0], httpx.TransportError), answered  # no answer: it was still working

    records = asyncio.run(stored_rubrics(store_url))
    asked = [RubricRequest.model_validate(body) for body in [ask("What is a photon?"), *TWO_SCHEMAS]]
    assert_complete(records, asked)  # every row whole and passing its bounds' checks
    questions = sorted(r.question for r in records)
    assert questions == ["Question 0?", "Question 1?", "What is a photon?"]  # the 3-criteria pair: absent

    second = rubric_server(tiny_model_dir, store_url, tmp_path).start()
    try:
        again = httpx.post(f"{second.url}/rubrics", json=ask("What is a photon?"), timeout=60).json()
        assert again["cached"] and again["rubric_id"] == stored["rubric_id"]
        r = httpx.post(f"{second.url}/rubrics/batch", json={"requests": TWO_SCHEMAS}, timeout=300)
        assert r.status_code == 200, r.text
        results = [item["result"] for item in r.json()["results"]]
        assert [x["cached"] for x in results] == [True, True, False, False]
        for body, result in zip(TWO_SCHEMAS, results, strict=True):
            assert (
                rubric_problems(
                    RubricResponse.model_validate(result).criteria, RubricBounds(**body["bounds"])
                )
                == []
            )
    finally:
        second.stop()


@pytest.mark.postgres
def test_two_processes_sharing_postgres_generate_once(tiny_model_dir, tmp_path, postgres_server):
    store_url = postgres_server.create_database()
    servers = [rubric_server(tiny_model_dir, store_url, tmp_path) for _ in range(2)]
    for s in servers:
        s.start()
    try:

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=300) as client:
                return await asyncio.gather(
                    *(
                        client.post(f"{s.url}/rubrics", json=ask("What is a volt?"))
                        for s in servers
                        for _ in range(2)
                    )
                )

        responses = asyncio.run(fire())
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
        assert len({r.json()["rubric_id"] for r in responses}) == 1
        assert sum(generated_count(s) for s in servers) == 1
        assert sum(not r.json()["cached"] for r in responses) == 1
    finally:
        for s in servers:
            s.stop()


@pytest.mark.vllm
def test_vllm_backend_rubric_fits_schema(tiny_model_dir, tmp_path):
    server = rubric_server(tiny_model_dir, f"sqlite:///{tmp_path / 'r.db'}", tmp_path, backend="vllm").start()
    try:
        r = httpx.post(f"{server.url}/rubrics", json=ask("Why do ships float?"), timeout=300)
        assert r.status_code == 200, r.text
        rubric = assert_valid(r.json())
        assert all(isinstance(c, Criterion) for c in rubric.criteria)
        assert httpx.get(f"{server.url}/v1/info").json()["backend"] == "vllm"
    finally:
        server.stop()


async def test_a_lock_held_too_long_elsewhere_is_503_with_retry_after(tiny_model_dir, tmp_path):
    """Another replica still generating the same rubric is a wait-and-retry, not our bug (500)."""
    from rcsd.client.protocol import RubricRequest
    from rcsd.services.rubric.store import open_store, request_key

    store_url = f"sqlite:///{tmp_path / 'rubrics.db'}"
    server = rubric_server(tiny_model_dir, store_url, tmp_path)
    server.args += ["--lock-timeout-s", "0.3", "--retry-after-s", "3"]
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            info = (await client.get("/v1/info")).json()
            body = ask("Who holds the lock?")
            key = request_key(
                RubricRequest.model_validate(body),
                model=info["model"]["name"],
                model_revision=info["model"]["revision"],
                template_version=info["template_version"],
            )
            store = await open_store(store_url)
            try:
                async with store.generation_lock(key):  # "another replica" is generating it
                    r = await client.post("/rubrics", json=body, headers={"x-request-id": "locked"})
            finally:
                await store.aclose()
        assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
        assert r.json()["error"]["type"] == "unavailable" and r.headers["x-request-id"] == "locked"
    finally:
        server.stop()


@pytest.mark.parametrize("grace_s", [0.2, 300])
def test_sigterm_lets_the_batch_in_flight_finish_within_the_grace(tiny_model_dir, tmp_path, grace_s):
    """`graceful_shutdown_s` decides whether a batch still generating at SIGTERM gets its answer."""
    server = rubric_server(tiny_model_dir, f"sqlite:///{tmp_path / 'rubrics.db'}", tmp_path)
    server.args += ["--graceful-shutdown-s", str(grace_s)]
    server.start()
    sender, answered = two_schema_batch_in_flight(server, generated_before=0)
    server.stop(timeout_s=330)
    sender.join(timeout=30)
    if grace_s >= 300:
        assert isinstance(answered[0], httpx.Response) and answered[0].status_code == 200, answered
        assert len(answered[0].json()["results"]) == 4
    else:
        assert not (isinstance(answered[0], httpx.Response) and answered[0].status_code == 200), answered
