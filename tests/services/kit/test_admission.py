"""Admission by a token budget: too large is refused, what fits waits its turn, small ones pass big ones boundedly."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rcsd.services.kit import admission as admission_module
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.errors import ServiceError
from rcsd.services.kit.metrics import ServiceMetrics


def _admission(max_tokens: int = 100, max_concurrency: int = 8, max_queue: int = 8) -> Admission:
    return Admission(max_concurrency, max_queue, max_tokens, 1, ServiceMetrics("teacher"))


async def _hold(admission: Admission, tokens: int, started: list[int], release: asyncio.Event) -> None:
    async with admission.slot(tokens):
        started.append(tokens)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_request_larger_than_the_budget_is_413_naming_the_limit():
    with pytest.raises(ServiceError) as caught:
        async with _admission(max_tokens=100).slot(101):
            pass
    assert caught.value.status == 413 and "max_tokens_in_flight 100" in caught.value.message


async def test_what_does_not_fit_waits_while_small_requests_pass_it():
    admission, started = _admission(max_tokens=100), []
    big_done, rest_done = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_hold(admission, 60, started, big_done))
    await _settle()
    second = asyncio.create_task(_hold(admission, 60, started, rest_done))  # does not fit beside the first
    small = asyncio.create_task(_hold(admission, 30, started, rest_done))
    await _settle()
    assert started == [60, 30]
    big_done.set()
    await first
    await _settle()
    assert started == [60, 30, 60]  # its turn came when the first finished
    rest_done.set()
    await asyncio.gather(second, small)
    assert admission._tokens == 0 and admission._running == 0


async def test_a_waiting_request_is_overtaken_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr(admission_module, "MAX_OVERTAKES", 2)
    admission, started = _admission(max_tokens=100), []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_hold(admission, 60, started, release))]
    await _settle()
    tasks += [asyncio.create_task(_hold(admission, t, started, release)) for t in (60, 5, 6, 7)]
    await _settle()
    assert started == [60, 5, 6]  # 7 fits too, but the waiting 60 was overtaken twice already
    release.set()
    await asyncio.gather(*tasks)
    assert started == [60, 5, 6, 60, 7]


async def test_a_full_queue_is_429_and_a_cancelled_waiter_leaves_the_line():
    admission, started = _admission(max_tokens=100, max_concurrency=1, max_queue=1), []
    release = asyncio.Event()
    running = asyncio.create_task(_hold(admission, 10, started, release))
    await _settle()
    waiting = asyncio.create_task(_hold(admission, 10, started, release))
    await _settle()
    with pytest.raises(ServiceError) as caught:
        async with admission.slot(10):
            pass
    assert caught.value.status == 429 and caught.value.retry_after_s == 1
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert admission.waiting() == 0
    release.set()
    await running
    assert started == [10] and admission._running == 0


async def _hold_as(admission: Admission, key: str, started: list[str], release: asyncio.Event) -> None:
    async with admission.slot(1, key=key):
        started.append(key)
        await release.wait()


async def test_keys_take_turns_so_a_flood_does_not_starve_another_key():
    admission, started = _admission(max_concurrency=1, max_queue=64), []
    releases = [asyncio.Event() for _ in range(13)]
    tasks = [asyncio.create_task(_hold_as(admission, "flood", started, releases[i])) for i in range(10)]
    await _settle()
    tasks += [asyncio.create_task(_hold_as(admission, "quiet", started, releases[10 + i])) for i in range(3)]
    await _settle()
    order = {"flood": iter(releases[:10]), "quiet": iter(releases[10:])}
    for _ in range(13):  # finish whatever runs, one at a time
        next(order[started[-1]]).set()
        await _settle()
    await asyncio.gather(*tasks)
    # quiet's 3 requests arrived behind 9 waiting flood requests, yet each ran after one flood turn
    assert started[:7] == ["flood", "quiet", "flood", "quiet", "flood", "quiet", "flood"]


async def test_a_full_queue_refuses_the_key_over_its_share_not_a_newcomer():
    admission, started = _admission(max_concurrency=1, max_queue=4), []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_hold_as(admission, "flood", started, release)) for _ in range(5)]
    await _settle()  # one runs, four wait: the queue is full
    with pytest.raises(ServiceError) as caught:
        async with admission.slot(1, key="flood"):
            pass
    assert caught.value.status == 429 and caught.value.code == "queue_full"
    tasks.append(asyncio.create_task(_hold_as(admission, "quiet", started, release)))  # not refused
    await _settle()
    assert admission.waiting() == 5
    release.set()
    await asyncio.gather(*tasks)
    assert started.count("quiet") == 1 and started.index("quiet") == 1
