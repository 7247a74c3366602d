"""One logical call of a client: its options shared by every retry and part, its attempts, its timeouts.

`BaseClient` (`_base.py`) decides what to do with them; these are the plain records and the arithmetic.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, replace

import httpx

from rcsd.client._replicas import Replica

Timeout = float | httpx.Timeout


@dataclass(frozen=True)
class CallOptions:
    """What one logical call shares across its retries and parts."""

    request_id: str
    timeout: httpx.Timeout
    deadline_at: float  # time.monotonic() by which the whole call ends
    started_at: float

    def part(self, name: int | str) -> CallOptions:
        """Options of one part of a split call: same deadline, a derived request id."""
        return replace(self, request_id=f"{self.request_id}-{name}")


@dataclass
class Attempts:
    """The attempts of one call so far, and what every attempt resends."""

    method: str
    path: str
    content: bytes | None
    options: CallOptions
    pinned: Replica | None
    count: int = 0


def as_timeout(timeout: Timeout) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def capped(timeout: httpx.Timeout, remaining: float) -> httpx.Timeout:
    """The attempt's timeout, no part of it past the call's deadline."""
    remaining = max(remaining, 0.001)
    parts = timeout.as_dict()
    return httpx.Timeout(**{k: remaining if v is None else min(v, remaining) for k, v in parts.items()})


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
