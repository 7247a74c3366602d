"""Concurrent calls with the same key do the work once; the others wait for its result."""

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
        if key in self._in_flight:
            return await asyncio.shield(self._in_flight[key]), False
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            future.set_result(await work())
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; don't warn that nobody looked
            raise
        finally:
            del self._in_flight[key]
        return future.result(), True
