"""The client against real teacher service processes on loopback (hf backend, the tiny model).

Two replicas with small limits (so batches are split), a third whose tokenizer differs, and a
replica SIGKILLed and restarted while requests flow. Scores are compared with an independent
path: each completion posted alone with plain httpx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from rcsd.client import (
    AsyncTeacherClient,
    IncompatibleTokenizerError,
    TeacherClient,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.client import tokenizer_hash as client_tokenizer_hash
from rcsd.recipes.launch import ServiceProcess

LIMITS = [
    "--max-top-k", "8",
    "--max-completions-per-group", "3",
    "--max-groups-per-batch", "2",
    "--max-completion-tokens-per-request", "48",
]  # fmt: skip
ATOL = 1e-4


def teacher(model_dir: Path, log_dir: Path) -> ServiceProcess:
    args = ["--backend", "hf", "--model", str(model_dir), "--dtype", "float32", *LIMITS]
    return ServiceProcess("teacher", args, log_dir)


@pytest.fixture(scope="module")
def replicas(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    servers = [teacher(tiny_model_dir, tmp_path_factory.mktemp("replicas")) for _ in range(2)]
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(lambda server: server.start(), servers))
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def groups(tokenizer) -> list[TeacherRequest]:
    rng = np.random.default_rng(0)
    texts = ["The ball falls for about two seconds.", "t = sqrt(2h/g) = 2.02 s", "I do not know."]
    groups = []
    for g in range(5):
        completions = [tokenizer.encode(text) for text in texts]
        completions += [rng.integers(3, 1000, size=int(rng.integers(2, 12))).tolist() for _ in range(g)]
        mode = "reference" if g % 2 else "none"
        reference = "t = sqrt(2h/g) = 2.02 s" if g % 2 else None
        groups.append(
            TeacherRequest(
                question=f"Question {g}: how long does a ball dropped from 20 m fall?",
                reference_answer=reference,
                context_mode=mode,
                completions=completions,
                top_k=4,
            )
        )
    return groups


def one_by_one(url: str, groups: list[TeacherRequest]) -> list[list[dict]]:
    """The independent path: every completion alone, JSON, plain httpx."""
    scores = []
    for group in groups:
        row = []
        for completion in group.completions:
            body = group.model_copy(update={"completions": [completion]}).model_dump(mode="json")
            answer = httpx.post(f"{url}/teacher_logprobs", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            row.append(answer.json()["completions"][0])
        scores.append(row)
    return scores


def assert_matches(responses: list[TeacherResponse], expected: list[list[dict]]) -> None:
    assert len(responses) == len(expected)
    for response, row in zip(responses, expected, strict=True):
        assert len(response.completions) == len(row)
        for got, want in zip(response.completions, row, strict=True):
            np.testing.assert_array_equal(got.token_ids, want["token_ids"])
            np.testing.assert_allclose(got.logprobs, want["logprobs"], atol=ATOL)
            np.testing.assert_allclose(got.topk_logprobs, want["topk_logprobs"], atol=ATOL)


def served_batches(server: ServiceProcess) -> float:
    """Successful /teacher_logprobs/batch answers since the process started (its /metrics)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rcsd_requests_total{")
        and 'route="/v1/teacher_logprobs/batch"' in line
        and 'status="200"' in line
    )


def test_split_batches_over_two_replicas_equal_one_by_one_scores(replicas, groups):
    expected = one_by_one(replicas[0].url, groups)
    before = [served_batches(server) for server in replicas]
    with TeacherClient([server.url for server in replicas], binary=True) as client:
        assert client.info().limits["max_completions_per_group"] == 3
        responses = client.score_batch(groups)
    assert_matches(responses, expected)
    assert all(served_batches(server) > count for server, count in zip(replicas, before, strict=True))


def test_the_same_tokenizer_is_compatible(replicas, tokenizer, groups):
    with TeacherClient([server.url for server in replicas]) as client:
        info = client.check_compatible(tokenizer)
        assert info.model.tokenizer_hash == client_tokenizer_hash(tokenizer)
        client.score_batch(groups[:2])  # every answer's hash is checked too


def test_a_teacher_with_another_tokenizer_is_refused(replicas, tiny_model_dir, tokenizer, tmp_path):
    from tests.fixtures.tiny_model import build_tiny_model

    other_dir = build_tiny_model(tmp_path / "other", seed=1)
    state = json.loads((other_dir / "tokenizer.json").read_text())
    merges = state["model"]["merges"]
    merges[-1], merges[-2] = merges[-2], merges[-1]  # same vocab, another merge order
    (other_dir / "tokenizer.json").write_text(json.dumps(state))
    other = teacher(other_dir, tmp_path).start()
    try:
        other_hash = httpx.get(f"{other.url}/v1/info").json()["model"]["tokenizer_hash"]
        with (
            TeacherClient([other.url, replicas[0].url]) as client,
            pytest.raises(IncompatibleTokenizerError) as caught,
        ):
            client.check_compatible(tokenizer)
    finally:
        other.stop()
    message = str(caught.value)
    assert other.url in message and other_hash in message and client_tokenizer_hash(tokenizer) in message


async def test_a_replica_killed_and_restarted_while_requests_flow(replicas, groups):
    expected = one_by_one(replicas[0].url, groups)
    killed = replicas[1]
    results: list[list[TeacherResponse]] = []
    stop = asyncio.Event()
    async with AsyncTeacherClient([server.url for server in replicas], replica_cooldown=0.5) as client:

        async def keep_scoring() -> None:
            while not stop.is_set():
                results.append(await client.score_batch(groups))

        async def until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
            deadline = time.monotonic() + timeout_s
            while not condition() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)

        workers = asyncio.gather(*(keep_scoring() for _ in range(3)))
        await until(lambda: len(results) >= 2)
        await asyncio.to_thread(killed.kill)
        killed_at = len(results)
        await until(lambda: len(results) >= killed_at + 2)  # answered by the survivor alone
        answered_while_down = len(results) - killed_at
        await asyncio.to_thread(killed.start)  # same port; returns once /ready says 200
        restarted_at = len(results)
        await until(lambda: served_batches(killed) > 0)
        stop.set()
        await workers
    assert await asyncio.to_thread(served_batches, killed) > 0, "the restarted replica got no work"
    assert killed_at >= 2 and answered_while_down >= 2 and len(results) > restarted_at
    for responses in results:
        assert_matches(responses, expected)
