"""The rubric store on both engines (SQLite file, real PostgreSQL server): every test runs on each.

Crash and lock tests run real OS processes: this file is also their entry point
(`python test_store.py MODE ARGS...`, see `_child_main`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import rcsd.services.rubric.store as store_module
from rcsd.client.protocol import Criterion, RubricBounds, RubricRequest
from rcsd.services.rubric.store import (
    GenerationLockTimeout,
    RubricStore,
    StoredRubric,
    open_store,
    request_key,
    rubric_key,
)

KEY_INPUTS = dict(
    question="What is the boiling point of water at sea level?",
    reference_answer="100 °C",
    model="rubric-gen",
    model_revision="rev-1",
    template_version="rubric-v1",
    temperature=0.7,
    max_tokens=1024,
    bounds=RubricBounds(),
    seed=0,
)
BATCH = 200  # records per put_many in the crash child
WAIT_S = 60.0  # how long the parent waits for a child's line


def make_record(
    question: str = KEY_INPUTS["question"], *, tag: str = "a", **overrides: object
) -> StoredRubric:
    inputs = {**KEY_INPUTS, "question": question, **overrides}
    criteria = [
        Criterion(title=f"Correct value ({tag})", description="States 100 °C.", weight=9),
        Criterion(title=f"Units ({tag})", description="Gives the unit.", weight=3),
        Criterion(title=f"Confusion ({tag})", description="Mixes up Fahrenheit and Celsius.", weight=-1),
    ]
    return StoredRubric(
        key=rubric_key(**inputs),
        criteria=criteria,
        model=inputs["model"],
        model_revision=inputs["model_revision"],
        template_version=inputs["template_version"],
        question=question,
        reference_answer=inputs["reference_answer"],
    )


async def get_or_generate(
    store: RubricStore, record: StoredRubric, generate: Callable[[], Awaitable[None]]
) -> StoredRubric:
    """The service's pattern: get; on a miss lock, get again, generate (`generate` stands for the LLM) and put."""
    if (found := await store.get(record.key)) is not None:
        return found
    async with store.generation_lock(record.key, timeout=WAIT_S):
        if (found := await store.get(record.key)) is not None:
            return found
        await generate()
        return await store.put(record)


# -- hit, miss, idempotency, keys ------------------------------------------------------------------------


async def test_miss_then_hit(store_url: str) -> None:
    record = make_record()
    async with await open_store(store_url) as store:
        assert await store.get(record.key) is None
        assert await store.get_by_id(record.rubric_id) is None
        assert await store.count() == 0
        assert await store.put(record) == record
        assert await store.get(record.key) == record
        assert await store.get_by_id(record.rubric_id) == record
        assert await store.get_by_id("rub_" + "0" * 24) is None
        assert await store.count() == 1
    assert record.rubric_id == "rub_" + record.key[:24]
    assert record.response(cached=True).attempts == 0
    assert record.response(cached=False).attempts == 1


async def test_put_keeps_the_first_record(store_url: str) -> None:
    first = make_record(tag="first")
    second = make_record(tag="second").model_copy(update={"attempts": 3})
    assert (first.key, first.criteria) != (first.key, second.criteria) and first.key == second.key
    other = make_record("Another question?")
    async with await open_store(store_url) as store:
        assert await store.put(first) == first
        assert await store.put(second) == first
        assert await store.put_many([second, other, other]) == 1
        assert await store.get(first.key) == first
        assert await store.get(other.key) == other
        assert await store.count() == 2


async def test_every_key_input_separates_rubrics(store_url: str) -> None:
    variants = [
        {},
        {"question": "What is the boiling point of water at sea level? "},
        {"reference_answer": None},
        {"reference_answer": ""},
        {"model": "rubric-gen-2"},
        {"model_revision": "rev-2"},
        {"template_version": "rubric-v2"},
        {"temperature": 0.0},
        {"max_tokens": 512},
        {"bounds": RubricBounds(min_criteria=2)},
        {"bounds": RubricBounds(max_criteria=24)},
        {"seed": 1},
        {"top_p": 0.95},
        {"top_k": 20},
        {"top_p": 0.95, "top_k": 20},
    ]
    keys = [rubric_key(**{**KEY_INPUTS, **variant}) for variant in variants]
    assert len(set(keys)) == len(variants)
    assert rubric_key(**KEY_INPUTS) == keys[0]  # deterministic
    assert rubric_key(**{**KEY_INPUTS, "temperature": 0, "seed": 0}) == rubric_key(
        **{**KEY_INPUTS, "temperature": -0.0, "seed": False}
    )
    request = RubricRequest(
        question=KEY_INPUTS["question"],
        reference_answer=KEY_INPUTS["reference_answer"],
        temperature=0.7,
        max_tokens=1024,
        seed=0,
    )
    generator = {name: KEY_INPUTS[name] for name in ("model", "model_revision", "template_version")}
    assert request_key(request, **generator) == keys[0]
    cut = request.model_copy(update={"top_p": 0.95, "top_k": 20})
    assert request_key(cut, **generator) == keys[-1]

    records = [make_record(**variant) for variant in variants]
    async with await open_store(store_url) as store:
        assert await store.put_many(records) == len(variants)
        for record in records:
            assert await store.get(record.key) == record


def test_keys_without_a_top_p_or_top_k_are_the_ones_stored_before_them() -> None:
    """Rubrics stored before top_p/top_k existed keep matching: with both off, the key hashes the
    same canonical JSON as then (written out here by hand)."""
    before = {
        "scheme": 1,
        "question": KEY_INPUTS["question"],
        "reference_answer": KEY_INPUTS["reference_answer"],
        "model": "rubric-gen",
        "model_revision": "rev-1",
        "template_version": "rubric-v1",
        "sampling": {
            "temperature": 0.7,
            "max_tokens": 1024,
            "min_criteria": 3,
            "max_criteria": 25,
            "seed": 0,
        },
    }
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    expected = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    assert rubric_key(**KEY_INPUTS) == rubric_key(**KEY_INPUTS, top_p=1.0, top_k=0) == expected


# -- durability ------------------------------------------------------------------------------------------


async def test_survives_close_and_reopen(store_url: str) -> None:
    records = [make_record(f"question {i}") for i in range(3)]
    async with await open_store(store_url) as store:
        for record in records:
            await store.put(record)
    async with await open_store(store_url) as store:
        for record in records:
            assert await store.get(record.key) == record
            assert await store.get_by_id(record.rubric_id) == record
        late = make_record("after reopening")
        assert await store.put(late) == late
        assert await store.count() == 4


async def test_kill_9_mid_batch_keeps_committed_rows(store_url: str) -> None:
    child = await _spawn("write", store_url)
    puts, batches, killed_in = set(), set(), -1
    try:
        async for line in _lines(child):
            event, number = line.split()
            {"put": puts, "batch": batches}.get(event, set()).add(int(number))
            if event == "begin" and int(number) >= 3:
                child.kill()  # SIGKILL while this batch's transaction is most likely open
                killed_in = int(number)
                break
    finally:
        await _reap(child)
    assert child.returncode == -9 and killed_in >= 3

    async with await open_store(store_url) as store:
        for i in puts:
            assert await store.get(_crash_record(f"single {i}").key) is not None, f"committed put {i} lost"
        for i in range(killed_in + 1):
            present = [
                await store.get(_crash_record(f"batch {i} item {j}").key) is not None for j in range(BATCH)
            ]
            if i in batches:
                assert all(present), f"committed batch {i} incomplete"
            else:
                assert not any(present) or all(present), f"batch {i} half written: {sum(present)}/{BATCH}"
        record = make_record("written after the crash")
        assert await store.put(record) == record
        assert await store.get(record.key) == record
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- the generation lock ---------------------------------------------------------------------------------


async def test_lock_serialises_tasks(store_url: str) -> None:
    record = make_record()
    generated: list[int] = []
    inside: list[int] = []
    overlaps: list[int] = []

    async def rounds(store: RubricStore, n: int) -> None:
        for _ in range(3):
            async with store.generation_lock("shared", timeout=WAIT_S):
                overlaps.append(len(inside))
                inside.append(n)
                await asyncio.sleep(0.01)
                inside.remove(n)

    async with await open_store(store_url) as one, await open_store(store_url) as two:
        stores = [one, one, two, two]  # tasks sharing a store and tasks on separate stores (connections)

        async def generate(n: int) -> None:
            generated.append(n)
            await asyncio.sleep(0.3)  # a slow generation widens the window for a duplicate

        results = await asyncio.gather(
            *(get_or_generate(store, record, lambda n=n: generate(n)) for n, store in enumerate(stores))
        )
        await asyncio.gather(*(rounds(store, n) for n, store in enumerate(stores)))
    assert len(generated) == 1
    assert all(result == record for result in results)
    assert overlaps == [0] * 12


async def test_lock_serialises_processes(store_url: str, tmp_path: Path) -> None:
    log, go = tmp_path / "lock.log", tmp_path / "go"
    children = [await _spawn("contend", store_url, str(log), str(go)) for _ in range(2)]
    try:
        for child in children:
            assert await _next_line(child) == "ready"
        go.touch()  # both start contending at the same moment
        answers = [await _next_line(child) for child in children]
        for child in children:
            assert await asyncio.wait_for(child.wait(), WAIT_S) == 0
    finally:
        for child in children:
            await _reap(child)

    events = [line.split() for line in log.read_text().splitlines()]
    assert sum(event == "generate" for _, event, _ in events) == 1, "the rubric was generated twice"
    assert len(set(answers)) == 1 and answers[0].startswith("rubric rub_")
    intervals, opened = [], {}
    for pid, event, stamp in events:
        if event == "start":
            opened[pid] = int(stamp)
        elif event == "end":
            intervals.append((opened.pop(pid), int(stamp), pid))
    assert len(intervals) == 1 + 2 * CONTEND_ROUNDS and not opened
    intervals.sort()
    for (_, end, pid), (start, _, next_pid) in itertools.pairwise(intervals):
        assert start >= end, f"critical sections of {pid} and {next_pid} overlap"


async def test_killed_holder_releases_lock(store_url: str) -> None:
    async with await open_store(store_url) as store:
        child = await _spawn("hold", store_url, "held-key")
        try:
            assert await _next_line(child) == "held"
            with pytest.raises(GenerationLockTimeout):
                async with store.generation_lock("held-key", timeout=0.3):
                    pytest.fail("got a lock that another process holds")
            async with store.generation_lock("another-key", timeout=5):
                pass  # other keys are not blocked
            child.kill()
        finally:
            await _reap(child)
        started = time.monotonic()
        async with store.generation_lock("held-key", timeout=10):
            waited = time.monotonic() - started
    assert waited < 5, f"a killed holder's lock took {waited:.1f}s to free"


async def test_cancelled_holders_and_waiters_leave_no_lock_held(store_url: str) -> None:
    async def hold(store: RubricStore, entered: asyncio.Event) -> None:
        async with store.generation_lock("key", timeout=WAIT_S):
            entered.set()
            await asyncio.sleep(WAIT_S)

    async with await open_store(store_url) as one, await open_store(store_url) as two:
        entered, never = asyncio.Event(), asyncio.Event()
        holder = asyncio.ensure_future(hold(one, entered))
        await entered.wait()
        waiters = [asyncio.ensure_future(hold(store, never)) for store in (one, two, one)]
        await asyncio.sleep(0.1)  # the waiters are polling or queued
        for task in [holder, *waiters]:
            task.cancel()
        await asyncio.gather(holder, *waiters, return_exceptions=True)
        assert not never.is_set()
        for store in (two, one):
            async with store.generation_lock("key", timeout=2):
                pass


@pytest.mark.postgres
async def test_a_64_question_batch_from_8_clients_holds_few_connections(postgres_server) -> None:
    """Two replicas, four clients each, all asking for the same 64 rubrics: 512 locks taken, waited
    for or held at once, on at most a pool plus one lock session per replica (the server allows 200)."""
    import psycopg

    from rcsd.services.rubric.store_postgres import DEFAULT_POOL_SIZE

    url = postgres_server.create_database()
    records = [make_record(f"Question {i}?") for i in range(64)]
    generated: list[str] = []
    counts: list[int] = []
    done = asyncio.Event()

    async def generate(key: str) -> None:
        generated.append(key)
        await asyncio.sleep(0.01)

    async def client(store: RubricStore) -> list[StoredRubric]:
        return list(
            await asyncio.gather(*(get_or_generate(store, r, lambda r=r: generate(r.key)) for r in records))
        )

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while not done.is_set():
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                counts.append((await cur.fetchone())[0])
                await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    async with await open_store(url) as one, await open_store(url) as two:
        answers = await asyncio.gather(*(client(store) for store in [one, two] * 4))
    done.set()
    await watcher
    assert sorted(generated) == sorted(r.key for r in records)  # each rubric generated once
    assert all(answer == records for answer in answers)
    assert max(counts) <= 2 * (DEFAULT_POOL_SIZE[1] + 1), max(counts)


# -- export / import -------------------------------------------------------------------------------------


async def test_export_import_round_trip(
    new_store_url: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "JSONL_BATCH", 2)  # several pages each way
    records = [make_record(f"question {i} — ünïcödé ✓") for i in range(4)]
    records.append(make_record("no reference", reference_answer=None))
    path = tmp_path / "rubrics.jsonl"
    async with await open_store(new_store_url()) as source:
        assert await source.put_many(records) == len(records)
        assert await source.export_jsonl(path) == len(records)
    exported = path.read_text(encoding="utf-8")
    assert len(exported.splitlines()) == len(records)

    async with await open_store(new_store_url()) as target:
        assert await target.import_jsonl(path) == len(records)
        assert await target.import_jsonl(path) == 0
        assert await target.import_jsonl(io.StringIO(exported)) == 0
        assert await target.count() == len(records)
        for record in records:
            assert await target.get(record.key) == record
        again = io.StringIO()
        assert await target.export_jsonl(again) == len(records)
    assert again.getvalue() == exported


async def test_import_rejects_a_tampered_line(store_url: str) -> None:
    good, bad = make_record("good"), make_record("bad")
    lines = [good.model_dump_json(), "", bad.model_dump_json().replace(bad.rubric_id, "rub_" + "f" * 24)]
    async with await open_store(store_url) as store:
        with pytest.raises(ValueError, match=r"<stream>:3: not a stored rubric"):
            await store.import_jsonl(io.StringIO("\n".join(lines) + "\n"))
        assert await store.count() == 0  # the batch holding the bad line was refused whole


# -- child processes -------------------------------------------------------------------------------------

CONTEND_ROUNDS = 5


def _crash_record(question: str) -> StoredRubric:
    return make_record(question, seed=7)


async def _spawn(mode: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, mode, *args, stdout=asyncio.subprocess.PIPE
    )


async def _next_line(child: asyncio.subprocess.Process) -> str:
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), WAIT_S)
    assert line, f"child exited early ({await child.wait()})"
    return line.decode().strip()


async def _lines(child: asyncio.subprocess.Process) -> AsyncIterator[str]:
    while True:
        yield await _next_line(child)


async def _reap(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()
    await child.wait()


async def _child_write(url: str) -> None:
    """Put records one by one and in batches, printing each once committed, until killed."""
    async with await open_store(url) as store:
        for i in itertools.count():
            await store.put(_crash_record(f"single {i}"))
            print(f"put {i}", flush=True)
            batch = [_crash_record(f"batch {i} item {j}") for j in range(BATCH)]
            print(f"begin {i}", flush=True)
            await store.put_many(batch)
            print(f"batch {i}", flush=True)


async def _child_contend(url: str, log_path: str, go_path: str) -> None:
    """Race the other child to generate one rubric, then take a shared lock a few times; log the start
    and end of every critical section (CLOCK_MONOTONIC is one clock for all processes)."""
    pid = os.getpid()
    with open(log_path, "a", encoding="utf-8") as log:

        def note(event: str) -> None:
            log.write(f"{pid} {event} {time.monotonic_ns()}\n")
            log.flush()

        async with await open_store(url) as store:
            print("ready", flush=True)
            while not os.path.exists(go_path):
                await asyncio.sleep(0.005)

            async def generate() -> None:
                note("start")
                note("generate")
                await asyncio.sleep(0.3)  # a slow generation widens the window for a duplicate
                note("end")

            record = await get_or_generate(store, make_record("contended"), generate)
            for _ in range(CONTEND_ROUNDS):
                async with store.generation_lock("shared", timeout=WAIT_S):
                    note("start")
                    await asyncio.sleep(0.02)
                    note("end")
    print(f"rubric {record.rubric_id}", flush=True)


async def _child_hold(url: str, key: str) -> None:
    async with await open_store(url) as store, store.generation_lock(key):
        print("held", flush=True)
        await asyncio.sleep(600)


def _child_main(mode: str, *args: str) -> None:
    modes = {"write": _child_write, "contend": _child_contend, "hold": _child_hold}
    asyncio.run(modes[mode](*args))


if __name__ == "__main__":
    _child_main(*sys.argv[1:])


async def test_cli_moves_a_store_between_engines(new_store_url: Callable[[], str], tmp_path: Path) -> None:
    """`rcsd rubrics export|import` as a user runs it, from this test's engine into SQLite."""
    records = [make_record(f"cli question {i}") for i in range(3)]
    source_url, target_url = new_store_url(), f"sqlite:///{tmp_path / 'moved.db'}"
    async with await open_store(source_url) as source:
        await source.put_many(records)
    path = tmp_path / "moved.jsonl"
    for args in (
        ["export", str(path), "--store-url", source_url],
        ["import", str(path), "--store-url", target_url],
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "rcsd.services.cli", "rubrics", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "3 rubrics" in done.stdout
    async with await open_store(target_url) as target:
        assert [await target.get(r.key) for r in records] == records
