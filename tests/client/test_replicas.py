"""Replicas: least-loaded selection, failover, and a killed replica coming back into use."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from rcsd.client import AsyncTeacherClient, TeacherClient, TeacherRequest
from rcsd.client._replicas import ReplicaPool

REQUEST = TeacherRequest(question="2+2?", context_mode="none", completions=[[5, 6, 7]])
SCORE = "/v1/teacher_logprobs"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pool_prefers_fewest_in_flight_and_round_robins_ties():
    pool = ReplicaPool(["http://a", "http://b/", "http://c"], cooldown=1.0, clock=Clock())
    a, b, c = pool.replicas
    assert b.url == "http://b"
    picks = [pool.acquire()[0] for _ in range(3)]
    assert picks == [a, b, c]
    pool.release(a)
    pool.release(c)
    assert pool.acquire()[0] is a  # a and c tie at 0; the cursor wrapped past c
    assert pool.acquire()[0] is c


def test_pool_sets_failed_replicas_aside_then_probes_them():
    clock = Clock()
    pool = ReplicaPool(["http://a", "http://b"], cooldown=1.0, clock=clock)
    a, b = pool.replicas
    pool.failed(a)
    assert all(pool.acquire()[0] is b for _ in range(3))
    clock.now += 1.01
    for _ in range(3):
        pool.release(b)
    replica, probe = pool.acquire()
    assert (replica, probe) == (a, True)
    pool.probed(a, ok=False)  # still down: twice the cool-down
    pool.release(a)
    clock.now += 1.5
    assert pool.acquire() == (b, False)
    clock.now += 0.6
    pool.release(b)
    assert pool.acquire() == (a, True)
    pool.probed(a, ok=True)
    pool.release(a)
    assert pool.acquire() == (b, False) and pool.acquire() == (a, False)


def test_pool_sets_a_replica_aside_after_a_run_of_500s_not_one():
    pool = ReplicaPool(["http://a", "http://b"], cooldown=1.0, clock=Clock())
    a, b = pool.replicas
    pool.errored(a)
    pool.errored(a)
    assert a.unavailable_until == 0.0 and not a.needs_probe  # two 500s: still in rotation
    pool.succeeded(a)  # a success ends the run
    pool.errored(a)
    pool.errored(a)
    assert a.unavailable_until == 0.0
    pool.errored(a)  # the third in a row
    assert a.needs_probe and all(pool.acquire()[0] is b for _ in range(3))


def test_pool_with_every_replica_aside_uses_the_one_back_soonest():
    clock = Clock()
    pool = ReplicaPool(["http://a", "http://b"], cooldown=1.0, clock=clock)
    a, b = pool.replicas
    pool.failed(a, retry_after=5)
    pool.failed(b, retry_after=2)
    assert pool.acquire() == (b, False)


async def test_load_spreads_over_two_replicas_async(start_replica):
    one, two = start_replica(delay_s=0.05), start_replica(delay_s=0.05)
    async with AsyncTeacherClient([one.url, two.url]) as client:
        await client.info()
        await asyncio.gather(*(client.score(REQUEST) for _ in range(40)))
    counts = one.state.hits[SCORE], two.state.hits[SCORE]
    assert sum(counts) == 40 and min(counts) >= 18, counts


def test_load_spreads_over_two_replicas_sync_threads(start_replica):
    one, two = start_replica(delay_s=0.05), start_replica(delay_s=0.05)
    with TeacherClient([one.url, two.url]) as client, ThreadPoolExecutor(8) as threads:
        client.info()
        list(threads.map(lambda _: client.score(REQUEST), range(32)))
    counts = one.state.hits[SCORE], two.state.hits[SCORE]
    assert sum(counts) == 32 and min(counts) >= 14, counts
    assert max(one.state.max_in_flight, two.state.max_in_flight) <= 5


def test_a_dead_replica_is_routed_around_without_waiting(start_replica):
    dead, alive = start_replica(), start_replica()
    dead.stop()
    with TeacherClient([dead.url, alive.url]) as client:
        started = time.monotonic()
        for _ in range(10):
            client.score(REQUEST)
        elapsed = time.monotonic() - started
    assert alive.state.hits[SCORE] == 10
    assert elapsed < 1.0, elapsed


def test_a_killed_then_restarted_replica_is_used_again(start_replica):
    one, two = start_replica(), start_replica()
    with TeacherClient([one.url, two.url], replica_cooldown=0.2) as client:
        client.info()
        for _ in range(4):
            client.score(REQUEST)
        assert one.state.hits[SCORE] == two.state.hits[SCORE] == 2
        one.stop()
        for _ in range(10):
            client.score(REQUEST)
        assert two.state.hits[SCORE] == 12
        one.start()  # same port, same state
        deadline = time.monotonic() + 5
        while one.state.hits[SCORE] == 2 and time.monotonic() < deadline:
            client.score(REQUEST)
            time.sleep(0.05)
        assert one.state.hits[SCORE] == 3, "the restarted replica got no work"
        before = one.state.hits[SCORE], two.state.hits[SCORE]
        for _ in range(10):
            client.score(REQUEST)
    assert (one.state.hits[SCORE] - before[0], two.state.hits[SCORE] - before[1]) == (5, 5)


async def test_a_replica_killed_while_requests_flow_loses_no_request(start_replica):
    one, two = start_replica(delay_s=0.02), start_replica(delay_s=0.02)
    async with AsyncTeacherClient([one.url, two.url], replica_cooldown=0.2) as client:
        await client.info()
        answered, stop = 0, asyncio.Event()

        async def keep_scoring() -> None:
            nonlocal answered
            while not stop.is_set():
                await client.score(REQUEST)
                answered += 1

        workers = asyncio.gather(*(keep_scoring() for _ in range(6)))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(one.stop)
        hits_when_killed = one.state.hits[SCORE]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(one.start)
        deadline = time.monotonic() + 5
        while one.state.hits[SCORE] == hits_when_killed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await workers
    assert hits_when_killed > 0
    assert one.state.hits[SCORE] > hits_when_killed, "replica one was not used again after its restart"
    assert one.state.hits[SCORE] + two.state.hits[SCORE] == answered


def test_a_loading_replica_is_skipped_until_ready(start_replica):
    loading, ready = start_replica(ready=False), start_replica()
    with TeacherClient([loading.url, ready.url]) as client:
        shift = [0.0]
        client._pool._clock = lambda: time.monotonic() + shift[0]  # time passes without sleeping
        for _ in range(6):
            client.score(REQUEST)
        assert ready.state.hits[SCORE] == 6
        loading.state.ready = True
        shift[0] += 1.05  # past the Retry-After (1 s) of its 503
        for _ in range(6):
            client.score(REQUEST)
    assert loading.state.hits[SCORE] == 3
    assert "/ready" in [path for path, _ in loading.state.seen]
