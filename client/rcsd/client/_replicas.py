"""Replica selection: fewest requests in flight, ties round-robin, failed replicas set aside.

Pure bookkeeping under a lock (no I/O), shared by the sync client's threads and the
async client's tasks. A replica that fails to connect, answers 502-504, or answers 500
several times in a row is set aside for a cool-down that doubles with each consecutive
failure; once it is over, the next caller that picks it is told to probe it (`GET /ready`)
before sending real work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rcsd.client._constants import MAX_REPLICA_COOLDOWN, SERVER_ERRORS_BEFORE_SET_ASIDE


@dataclass(eq=False)
class Replica:
    url: str  # the base URL, without a trailing slash
    index: int
    in_flight: int = 0
    failures: int = 0  # consecutive
    server_errors: int = 0  # consecutive 500 answers
    unavailable_until: float = 0.0  # monotonic seconds
    needs_probe: bool = False
    probing: bool = False

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, in_flight={self.in_flight}, failures={self.failures})"


class ReplicaPool:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one base URL is needed")
        self.replicas = [Replica(url.rstrip("/"), i) for i, url in enumerate(urls)]
        self._cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._cursor = 0  # round-robin position among tied replicas

    def acquire(self, pinned: Replica | None = None) -> tuple[Replica, bool]:
        """Pick a replica and count the request as in flight; True means: probe it first."""
        with self._lock:
            probe = False
            if pinned is not None:
                replica = pinned
            else:
                now = self._clock()
                ready = [r for r in self.replicas if r.unavailable_until <= now and not r.probing]
                if ready:
                    replica = self._least_loaded(ready)
                    probe = replica.probing = replica.needs_probe
                else:  # every replica is set aside: the one back soonest (the retry delay paced us)
                    replica = min(self.replicas, key=lambda r: r.unavailable_until)
            replica.in_flight += 1
            return replica, probe

    def _least_loaded(self, ready: list[Replica]) -> Replica:
        low = min(r.in_flight for r in ready)
        tied = [r for r in ready if r.in_flight == low]
        after_cursor = [r for r in tied if r.index >= self._cursor]
        replica = (after_cursor or tied)[0]
        self._cursor = replica.index + 1
        return replica

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.in_flight -= 1

    def probed(self, replica: Replica, ok: bool, retry_after: float | None = None) -> None:
        with self._lock:
            replica.probing = False
            if ok:
                replica.needs_probe = False
            else:
                self._set_aside(replica, retry_after)

    def succeeded(self, replica: Replica) -> None:
        with self._lock:
            replica.failures = 0
            replica.server_errors = 0
            replica.needs_probe = False
            replica.unavailable_until = 0.0

    def failed(self, replica: Replica, retry_after: float | None = None) -> None:
        """Connection failure or 502-504: set the replica aside; it is probed before it is used again."""
        with self._lock:
            self._set_aside(replica, retry_after)

    def errored(self, replica: Replica) -> None:
        """500: a bug hit by one request; only a run of them sets the replica aside."""
        with self._lock:
            replica.server_errors += 1
            if replica.server_errors >= SERVER_ERRORS_BEFORE_SET_ASIDE:
                replica.server_errors = 0
                self._set_aside(replica, None)

    def busy(self, replica: Replica, retry_after: float | None) -> None:
        """429: alive but full; skip it for Retry-After seconds, no probe needed."""
        with self._lock:
            if retry_after:
                replica.unavailable_until = max(replica.unavailable_until, self._clock() + retry_after)

    def has_other_ready(self, replica: Replica) -> bool:
        with self._lock:
            now = self._clock()
            return any(r is not replica and r.unavailable_until <= now for r in self.replicas)

    def _set_aside(self, replica: Replica, retry_after: float | None) -> None:
        replica.failures += 1
        cooldown = min(self._cooldown * 2 ** (replica.failures - 1), MAX_REPLICA_COOLDOWN)
        if retry_after is not None:
            cooldown = retry_after
        replica.unavailable_until = self._clock() + cooldown
        replica.needs_probe = True
