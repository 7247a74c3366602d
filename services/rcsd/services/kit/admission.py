"""Bounded admission: a fixed number of requests run, a bounded number wait, the rest get 429.

Refusing early with Retry-After keeps latency bounded under overload, and lets the
client spread load to another replica instead of piling up here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rcsd.services.kit.errors import ServiceError
from rcsd.services.kit.metrics import ServiceMetrics


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int, retry_after_s: int, metrics: ServiceMetrics):
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_queue = max_queue
        self._waiting = 0
        self._retry_after_s = retry_after_s
        self._metrics = metrics

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._max_queue:
            self._metrics.rejected.inc()
            raise ServiceError(
                429,
                f"server busy: {self._waiting} requests already waiting (max_queue={self._max_queue})",
                type="overloaded",
                retry_after_s=self._retry_after_s,
            )
        self._waiting += 1
        self._metrics.queue_depth.set(self._waiting)
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._metrics.queue_depth.set(self._waiting)
        self._metrics.in_flight.inc()
        try:
            yield
        finally:
            self._metrics.in_flight.dec()
            self._slots.release()
