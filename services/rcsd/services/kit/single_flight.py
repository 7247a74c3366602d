"""Concurrent calls with the same key do the work once; the others wait for its result.

The owner's failure is every waiter's failure (the same work would fail again), but not its
cancellation: a cancelled owner (its client went away) lets a waiter take the work over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The work's result, and whether this call did the work (False: it joined another's)."""
        while (owned := self._in_flight.get(key)) is not None:
            try:
                return await asyncio.shield(owned), False
            except asyncio.CancelledError:
                if not owned.cancelled() or _being_cancelled():
                    raise
                # the owner was cancelled, not us: the work is still wanted, so try again
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            future.set_result(await work())
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; don't warn that nobody looked
            raise
        finally:
            del self._in_flight[key]
        return future.result(), True


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
