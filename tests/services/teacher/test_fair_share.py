"""Many trainers, one teacher: named API keys, per-key metrics, and fair admission under a flood.

The load test runs the real teacher (tiny model, hf backend) with one request at a time
(`--max-concurrency 1`), so every request waits in admission's lines. Key `flood` keeps
FLOOD_STREAMS requests waiting all the time; key `quiet` sends requests one after another. With the
keys taking turns, a quiet request waits for at most the one running request plus one flood turn,
whatever the flood's depth; served in arrival order it would wait behind all FLOOD_STREAMS.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import pytest

from rcsd.client import __version__
from rcsd.recipes.launch import ServiceProcess
from tests.services.teacher.payloads import group

KEYS = {"flood": "flood-key-0123456789", "quiet": "quiet-key-0123456789"}
FLOOD_STREAMS = 12
QUIET_REQUESTS = 10
BODY = group("none", [[5] * 48] * 4)


@pytest.fixture(scope="module")
def shared_teacher(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("fair-share")
    keys_file = folder / "keys"
    keys_file.write_text("# name:key, one trainer each\nflood:" + KEYS["flood"] + "\n\n")
    args = ["--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32"]
    args += ["--api-keys-file", str(keys_file), "--max-concurrency", "1", "--max-queue", "64"]
    env = {"RCSD_TEACHER_API_KEYS": f"quiet:{KEYS['quiet']}"}  # the environment's form, beside the file
    server = ServiceProcess("teacher", args, folder, env=env).start()
    yield server
    server.stop()


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def test_each_named_key_is_accepted_and_a_wrong_one_is_401_in_openai_form(shared_teacher):
    url = shared_teacher.url
    for name in KEYS:
        assert (
            httpx.post(f"{url}/v1/teacher_logprobs", json=BODY, headers=_auth(name), timeout=60).status_code
            == 200
        )
    refused = httpx.post(f"{url}/v1/teacher_logprobs", json=BODY, headers={"Authorization": "Bearer nope"})
    error = refused.json()["error"]
    assert (
        refused.status_code == 401
        and error["param"] == "authorization"
        and error["code"] == "invalid_api_key"
    )
    assert httpx.get(f"{url}/version").json() == {"version": __version__}  # open, like /health
    assert httpx.get(f"{url}/v1/info", headers=_auth("quiet")).json()["version"] == __version__


def test_old_paths_still_answer_and_only_v1_is_in_the_schema(shared_teacher):
    url, headers = shared_teacher.url, _auth("quiet")
    old = httpx.post(f"{url}/teacher_logprobs", json=BODY, headers=headers, timeout=60)
    new = httpx.post(f"{url}/v1/teacher_logprobs", json=BODY, headers=headers, timeout=60)
    assert (
        old.status_code == new.status_code == 200 and old.json()["completions"] == new.json()["completions"]
    )
    paths = httpx.get(f"{url}/openapi.json", headers=headers).json()["paths"]
    assert {"/v1/teacher_logprobs", "/v1/teacher_logprobs/batch", "/version"} <= paths.keys()
    assert "/teacher_logprobs" not in paths
    bad = httpx.post(f"{url}/v1/teacher_logprobs", json={**BODY, "top_k": -1}, headers=headers).json()[
        "error"
    ]
    assert bad["param"] == bad["field"] == "top_k" and bad["code"] == "greater_than_equal"


async def _timed(client: httpx.AsyncClient, url: str, name: str) -> float:
    started = time.perf_counter()
    response = await client.post(f"{url}/v1/teacher_logprobs", json=BODY, headers=_auth(name))
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


async def _measure(url: str) -> dict[str, list[float]]:
    async with httpx.AsyncClient(timeout=120) as client:
        alone = [await _timed(client, url, "quiet") for _ in range(5)]
        stop = asyncio.Event()
        flooded: list[float] = []

        async def flood() -> None:
            while not stop.is_set():
                flooded.append(await _timed(client, url, "flood"))

        streams = [asyncio.create_task(flood()) for _ in range(FLOOD_STREAMS)]
        await asyncio.sleep(1.0)  # the flood's line fills up
        quiet = []
        for _ in range(QUIET_REQUESTS):
            quiet.append(await _timed(client, url, "quiet"))
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*streams)
    return {"quiet alone": alone, "quiet under flood": quiet, "flood": flooded}


def test_a_flooding_key_does_not_starve_another(shared_teacher):
    figures = asyncio.run(_measure(shared_teacher.url))
    print(f"\n{'requests':<20}{'n':>5}{'median ms':>12}{'max ms':>10}")
    for what, seconds in figures.items():
        print(
            f"{what:<20}{len(seconds):>5}{statistics.median(seconds) * 1e3:>12.1f}{max(seconds) * 1e3:>10.1f}"
        )
    service_s = statistics.median(figures["quiet alone"])
    quiet, flood = figures["quiet under flood"], figures["flood"]
    # a quiet request waits for the running request and at most one flood turn: ~3 service times
    assert statistics.median(quiet) < 4 * service_s + 0.1, figures
    assert max(quiet) < 6 * service_s + 0.2, figures
    # while the flood's own requests wait behind each other (about FLOOD_STREAMS service times)
    assert statistics.median(flood) > 2 * statistics.median(quiet), figures

    metrics = httpx.get(f"{shared_teacher.url}/metrics", headers=_auth("quiet")).text
    assert _sample(metrics, 'rcsd_key_requests_total{key_name="quiet",status="200"}') >= QUIET_REQUESTS + 5
    assert _sample(metrics, 'rcsd_key_requests_total{key_name="flood",status="200"}') >= len(flood)
    assert _sample(metrics, 'rcsd_key_tokens_total{key_name="flood"}') > 0
    assert all(secret not in metrics for secret in KEYS.values())


def _sample(exposition: str, series: str) -> float:
    return next(
        float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(series + " ")
    )
