"""Faults on the rubric service and its store, on real processes: nothing partial or corrupt is stored,
the client gets a clear status it can act on (503/507 with a message, never a bare 500), and the
retried batch completes.

- the service SIGKILLed between two items of a batch, then restarted (SQLite and PostgreSQL stores);
- the PostgreSQL server SIGKILLed between two items of a batch, then restarted;
- the disk under the SQLite store filled up (a small tmpfs; skipped where it cannot be mounted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from rcsd.client.protocol import RubricBatchRequest, RubricBounds, RubricRequest
from rcsd.services.rubric.store import open_store
from tests.pg_server import PostgresServer, running_postgres
from tests.reliability.conftest import tiny_service
from tests.reliability.faults import assert_complete, crash_and_restart, stored_rubrics, wait_until

# Different bounds are different grammars, so the engine generates the items one after another and
# the batch can be caught with some of its rubrics stored and others not. Many criteria each, so that
# an item takes seconds on the tiny model and the kill lands while the next one is generating.
ASKED = [
    RubricRequest(
        question=f"Crash question {i}?",
        bounds=RubricBounds(min_criteria=12 + i, max_criteria=12 + i),
        max_tokens=3072,
    )
    for i in range(3)
]
BATCH = RubricBatchRequest(requests=ASKED).model_dump(mode="json")
WAIT_S = 300


async def stored_count(url: str) -> int:
    async with await open_store(url) as store:
        return await store.count()


async def some_stored(url: str) -> None:
    await wait_until(lambda: _has_rows(url), WAIT_S, "a first rubric of the batch stored")


async def _has_rows(url: str) -> bool:
    return await stored_count(url) >= 1


async def retried_until_answered(http: httpx.AsyncClient, tries: int = 10) -> httpx.Response:
    """What the rcsd client does on 503: wait Retry-After and send the batch again."""
    for _ in range(tries):
        response = await http.post("/rubrics/batch", json=BATCH)
        if response.status_code != 503:
            return response
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    return response


def assert_batch_completed(response: httpx.Response, stored_before: list) -> None:
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert all(item["ok"] for item in results), results
    ids_before = {r.rubric_id for r in stored_before}
    for item in results:  # what was stored before the fault is served as stored, not generated again
        assert item["result"]["cached"] == (item["result"]["rubric_id"] in ids_before)


def assert_sqlite_intact(store_url: str) -> None:
    with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_service_killed_mid_batch_then_retried(engine, tiny_model_dir, tmp_path, request):
    if engine == "sqlite":
        store_url = f"sqlite:///{tmp_path / 'rubrics.db'}"
    else:
        store_url = request.getfixturevalue("pg_server").create_database()
    server = tiny_service("rubric", tiny_model_dir, tmp_path, "--store-url", store_url).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
            batch = asyncio.ensure_future(http.post("/rubrics/batch", json=BATCH))
            await some_stored(store_url)
            await asyncio.to_thread(crash_and_restart, server)
            with pytest.raises(httpx.TransportError):
                await batch
            before = await stored_rubrics(store_url)
            assert 1 <= len(before) < len(ASKED), "the kill did not land between two items"
            assert_complete(before, ASKED)
            if engine == "sqlite":
                assert_sqlite_intact(store_url)
            assert_batch_completed(await http.post("/rubrics/batch", json=BATCH), before)
        after = await stored_rubrics(store_url)
        assert len(after) == len(ASKED)
        assert_complete(after, ASKED)
    finally:
        server.stop()


@pytest.mark.postgres
async def test_postgres_killed_mid_batch_then_retried(tiny_model_dir, tmp_path):
    with running_postgres() as pg:
        durable(pg)
        store_url = pg.create_database()
        server = tiny_service("rubric", tiny_model_dir, tmp_path, "--store-url", store_url).start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
                batch = asyncio.ensure_future(http.post("/rubrics/batch", json=BATCH))
                await some_stored(store_url)
                await asyncio.to_thread(pg.kill)
                failed = await batch
                assert failed.status_code == 503 and "retry-after" in failed.headers, failed.text
                assert "store" in failed.json()["error"]["message"], failed.text
                await asyncio.to_thread(pg.restart)
                before = await stored_rubrics(store_url)
                assert 1 <= len(before) < len(ASKED), "the kill did not land between two items"
                assert_complete(before, ASKED)
                assert_batch_completed(await retried_until_answered(http), before)
            after = await stored_rubrics(store_url)
            assert len(after) == len(ASKED)
            assert_complete(after, ASKED)
        finally:
            server.stop()


def durable(pg: PostgresServer) -> None:
    """The test server commits asynchronously (fast, thrown away); a server that is killed must not
    lose what it acknowledged."""
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        conn.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder`; skips the test where it cannot be mounted."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a small file system of its own: mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; removing it frees the space."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


async def test_a_full_disk_is_a_clear_error_and_corrupts_nothing(tiny_model_dir, tmp_path):
    with small_disk(tmp_path / "disk", "4m") as disk:
        store_url = f"sqlite:///{disk / 'rubrics.db'}"
        server = tiny_service("rubric", tiny_model_dir, tmp_path, "--store-url", store_url).start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
                first = await http.post("/rubrics", json=ASKED[0].model_dump(mode="json"))
                assert first.status_code == 200, first.text
                filler = fill(disk)
                full = await http.post("/rubrics", json=ASKED[1].model_dump(mode="json"))
                assert full.status_code == 507, full.text
                assert "full" in full.json()["error"]["message"], full.text
                again = await http.get(f"/rubrics/{first.json()['rubric_id']}")
                assert again.status_code == 200 and again.json()["criteria"] == first.json()["criteria"]
                filler.unlink()
                freed = await http.post("/rubrics", json=ASKED[1].model_dump(mode="json"))
                assert freed.status_code == 200, freed.text
        finally:
            server.stop()
        assert_sqlite_intact(store_url)
        assert len(await stored_rubrics(store_url)) == 2
