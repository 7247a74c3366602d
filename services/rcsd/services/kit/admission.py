"""Bounded admission by requests and by tokens: what runs at once is bounded in memory, not just count.

A request declares its tokens (context + completion tokens, or prompt + max_tokens) once its
checks are done. It runs when fewer than `max_concurrency` requests run and its tokens fit in
what `max_tokens` leaves; otherwise it waits, and beyond `max_queue` waiting it gets a 429 with
Retry-After, so the client can spread load to another replica. A request larger than the whole
budget could never run: it is refused at once (413, naming the limit).

Fairness: waiting requests are admitted in arrival order, except that later requests that fit
may overtake an earlier one that does not (a huge request waiting for room must not hold up
small ones that fit beside what runs). Each waiter can be overtaken at most `MAX_OVERTAKES`
times; after that, requests behind it wait until it runs, so a huge request is never starved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from rcsd.services.kit.errors import ServiceError
from rcsd.services.kit.metrics import ServiceMetrics

MAX_OVERTAKES = 16  # later requests admitted ahead of a waiting one, at most


@dataclass(eq=False)
class _Waiter:
    tokens: int
    admitted: asyncio.Future[None] = field(repr=False)
    overtaken: int = 0


class Admission:
    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        max_tokens: int,
        retry_after_s: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.max_tokens = max_tokens
        self._retry_after_s = retry_after_s
        self._metrics = metrics
        self._running = 0
        self._tokens = 0  # of the running requests
        self._waiting: list[_Waiter] = []

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        """Hold a place for a request of `tokens` tokens while the body runs."""
        if tokens > self.max_tokens:
            raise ServiceError(
                413,
                f"the request needs {tokens} tokens (context + completion), more than the whole "
                f"max_tokens_in_flight {self.max_tokens}: split it",
                type="too_large",
            )
        if len(self._waiting) >= self.max_queue and not self._fits(tokens):
            self._metrics.rejected.inc()
            raise ServiceError(
                429,
                f"server busy: {len(self._waiting)} requests already waiting (max_queue={self.max_queue})",
                type="overloaded",
                retry_after_s=self._retry_after_s,
            )
        await self._admit(tokens)
        try:
            yield
        finally:
            self._release(tokens)

    def _fits(self, tokens: int) -> bool:
        return self._running < self.max_concurrency and self._tokens + tokens <= self.max_tokens

    async def _admit(self, tokens: int) -> None:
        waiter = _Waiter(tokens, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._dispatch()
        try:
            await waiter.admitted
        except asyncio.CancelledError:
            if waiter in self._waiting:  # still waiting: just leave the line
                self._waiting.remove(waiter)
                self._dispatch()
            else:  # admitted as it was cancelled: give the place back
                self._release(tokens)
            raise
        finally:
            self._metrics.queue_depth.set(len(self._waiting))

    def _dispatch(self) -> None:
        """Admit, in arrival order, every waiter that fits, within the overtaking bound."""
        passed: list[_Waiter] = []  # earlier waiters that did not fit
        for waiter in list(self._waiting):
            if not self._fits(waiter.tokens):
                passed.append(waiter)
                if waiter.overtaken >= MAX_OVERTAKES:
                    break  # nobody overtakes it any more
                continue
            for earlier in passed:
                earlier.overtaken += 1
            self._waiting.remove(waiter)
            self._running += 1
            self._tokens += waiter.tokens
            self._metrics.in_flight.inc()
            self._metrics.tokens_in_flight.set(self._tokens)
            waiter.admitted.set_result(None)
            if any(earlier.overtaken >= MAX_OVERTAKES for earlier in passed):
                break
        self._metrics.queue_depth.set(len(self._waiting))

    def _release(self, tokens: int) -> None:
        self._running -= 1
        self._tokens -= tokens
        self._metrics.in_flight.dec()
        self._metrics.tokens_in_flight.set(self._tokens)
        self._dispatch()
