"""Fault injection: crash a service process (SIGKILL) and start it again on the same port, the same
store and the same settings, as a supervisor would; and look at a rubric store from outside.

The training-run faults (kill the teacher in the middle of a training run, kill the trainer and
`--resume`) are meant to reuse `crash_and_restart` on the teacher's `ServiceProcess`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from rcsd.client.protocol import RubricBounds, RubricRequest, rubric_problems
from rcsd.recipes.launch import ServiceProcess
from rcsd.services.rubric.store import StoredRubric, open_store


def crash_and_restart(server: ServiceProcess, timeout_s: float = 180) -> ServiceProcess:
    """SIGKILL the service's whole process group, then start it again on the same port and wait until ready."""
    server.kill()
    return server.start(timeout_s)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not after {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def stored_rubrics(store_url: str) -> list[StoredRubric]:
    """Every row of the store, each parsed and validated (its id matches its key), read directly."""
    async with await open_store(store_url) as store:
        return await store.scan(after_key=None, limit=10_000)


def assert_complete(stored: list[StoredRubric], asked: list[RubricRequest]) -> None:
    """Every stored rubric answers one of the questions asked and passes every check of its bounds."""
    bounds: dict[str, RubricBounds] = {r.question: r.bounds for r in asked}
    for record in stored:
        assert record.question in bounds, record.question
        assert rubric_problems(record.criteria, bounds[record.question]) == [], record
