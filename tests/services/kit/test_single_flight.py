"""SingleFlight: one call does the work; a cancelled owner hands it over instead of failing the waiters."""

from __future__ import annotations

import asyncio

import pytest

from rcsd.services.kit.single_flight import SingleFlight


async def test_waiters_share_the_owners_result_and_error():
    flight: SingleFlight[int] = SingleFlight()
    calls: list[int] = []

    async def work() -> int:
        calls.append(1)
        await asyncio.sleep(0.01)
        return 7

    results = await asyncio.gather(*(flight.run("k", work) for _ in range(3)))
    assert results == [(7, True), (7, False), (7, False)] and len(calls) == 1

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("no rubric")

    outcomes = await asyncio.gather(*(flight.run("k", fail) for _ in range(2)), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)


async def test_a_cancelled_owner_hands_the_work_to_a_waiter():
    flight: SingleFlight[str] = SingleFlight()
    started = asyncio.Event()
    runs: list[str] = []

    async def work(who: str) -> str:
        runs.append(who)
        started.set()
        await asyncio.sleep(0.05)
        return f"done by {who}"

    owner = asyncio.ensure_future(flight.run("k", lambda: work("owner")))
    await started.wait()
    waiter = asyncio.ensure_future(flight.run("k", lambda: work("waiter")))
    await asyncio.sleep(0)  # the waiter is waiting on the owner's future
    owner.cancel()
    assert await waiter == ("done by waiter", True)
    assert runs == ["owner", "waiter"]
    with pytest.raises(asyncio.CancelledError):
        await owner


async def test_a_cancelled_waiter_leaves_the_owner_alone():
    flight: SingleFlight[str] = SingleFlight()
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "done"

    owner = asyncio.ensure_future(flight.run("k", work))
    await started.wait()
    waiter = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await owner == ("done", True)
