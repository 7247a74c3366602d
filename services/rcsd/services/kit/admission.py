"""Bounded admission by requests and by tokens: what runs at once is bounded in memory, not just count.

A request declares its tokens (context + completion tokens, or prompt + max_tokens) once its
checks are done. It runs when fewer than `max_concurrency` requests run and its tokens fit in
what `max_tokens` leaves; otherwise it waits, and beyond `max_queue` waiting it gets a 429 with
Retry-After, so the client can spread load to another replica. A request larger than the whole
budget could never run: it is refused at once (413, naming the limit).

Fairness between requests: waiting requests are admitted in arrival order, except that later
requests that fit may overtake an earlier one that does not (a huge request waiting for room must
not hold up small ones that fit beside what runs). Each waiter can be overtaken at most
`MAX_OVERTAKES` times; after that, requests behind it wait until it runs, so a huge request is
never starved.

Fairness between callers (several trainers on one service, each with its own API key name, the
context's `current_key_name`): each key has its own line, and the lines take turns (round robin:
the key served longest ago goes first), so a trainer that floods the service waits behind its own
requests, not in front of another trainer's. The queue is shared fairly too: when it is full, a
request is refused only if its key already holds its share (`max_queue` / keys waiting), so a
flood fills its own share and gets the 429s.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from rcsd.services.kit.api_keys import ANONYMOUS
from rcsd.services.kit.errors import ServiceError
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.request_context import current_key_name

MAX_OVERTAKES = 16  # later requests admitted ahead of a waiting one, at most


@dataclass(eq=False)
class _Waiter:
    tokens: int
    key: str
    arrival: int
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
        self._waiting: dict[str, list[_Waiter]] = {}  # one line per key, in arrival order
        self._arrivals = itertools.count()
        self._served: dict[str, int] = {}  # key -> when it was last admitted (an arrival tick)

    @asynccontextmanager
    async def slot(self, tokens: int, key: str | None = None) -> AsyncIterator[None]:
        """Hold a place for a request of `tokens` tokens while the body runs; `key`: whose request
        it is (default: the API key name of the request being served)."""
        key = key or current_key_name() or ANONYMOUS
        if tokens > self.max_tokens:
            raise ServiceError(
                413,
                f"the request needs {tokens} tokens (context + completion), more than the whole "
                f"max_tokens_in_flight {self.max_tokens}: split it",
                type="too_large",
            )
        waiting = self.waiting()
        if waiting >= self.max_queue and not self._fits(tokens) and self._holds_its_share(key):
            self._metrics.rejected.inc()
            raise ServiceError(
                429,
                f"server busy: {waiting} requests already waiting (max_queue={self.max_queue}), "
                f"{len(self._waiting.get(key, []))} of them from {key!r}",
                type="overloaded",
                retry_after_s=self._retry_after_s,
                code="queue_full",
            )
        await self._admit(tokens, key)
        self._metrics.key_tokens(key_name=key).inc(tokens)
        try:
            yield
        finally:
            self._release(tokens)

    def waiting(self) -> int:
        return sum(len(line) for line in self._waiting.values())

    def _holds_its_share(self, key: str) -> bool:
        keys = len(self._waiting.keys() | {key})
        return len(self._waiting.get(key, [])) >= max(1, self.max_queue // keys)

    def _fits(self, tokens: int) -> bool:
        return self._running < self.max_concurrency and self._tokens + tokens <= self.max_tokens

    async def _admit(self, tokens: int, key: str) -> None:
        waiter = _Waiter(tokens, key, next(self._arrivals), asyncio.get_running_loop().create_future())
        self._waiting.setdefault(key, []).append(waiter)
        self._dispatch()
        try:
            await waiter.admitted
        except asyncio.CancelledError:
            line = self._waiting.get(key, [])
            if waiter in line:  # still waiting: just leave the line
                line.remove(waiter)
                if not line:
                    del self._waiting[key]
                self._dispatch()
            else:  # admitted as it was cancelled: give the place back
                self._release(tokens)
            raise
        finally:
            self._count_waiting(key)

    def _dispatch(self) -> None:
        """Admit every waiter that fits: the keys take turns, each key's line in arrival order."""
        while (waiter := self._next()) is not None:
            line = self._waiting[waiter.key]
            line.remove(waiter)
            if not line:
                del self._waiting[waiter.key]
            self._served[waiter.key] = next(self._arrivals)
            self._running += 1
            self._tokens += waiter.tokens
            self._metrics.in_flight.inc()
            self._metrics.tokens_in_flight.set(self._tokens)
            self._count_waiting(waiter.key)
            waiter.admitted.set_result(None)
        self._metrics.queue_depth.set(self.waiting())

    def _next(self) -> _Waiter | None:
        """The next waiter to admit, or None: in turn order, each key's first waiter that fits and
        arrived before any waiter that may not be overtaken again."""
        everyone = [w for line in self._waiting.values() for w in line]
        stuck = [w for w in everyone if not self._fits(w.tokens)]
        barrier = min((w.arrival for w in stuck if w.overtaken >= MAX_OVERTAKES), default=math.inf)
        # the turn order: the key served longest ago (or never) first, ties by who waits longest
        turns = sorted(
            self._waiting.values(), key=lambda line: (self._served.get(line[0].key, -1), line[0].arrival)
        )
        for line in turns:
            chosen = next((w for w in line if w.arrival < barrier and self._fits(w.tokens)), None)
            if chosen is not None:
                for earlier in stuck:
                    if earlier.arrival < chosen.arrival:
                        earlier.overtaken += 1
                return chosen
        return None

    def _count_waiting(self, key: str) -> None:
        self._metrics.key_waiting(key_name=key).set(len(self._waiting.get(key, [])))
        self._metrics.queue_depth.set(self.waiting())

    def _release(self, tokens: int) -> None:
        self._running -= 1
        self._tokens -= tokens
        self._metrics.in_flight.dec()
        self._metrics.tokens_in_flight.set(self._tokens)
        self._dispatch()
