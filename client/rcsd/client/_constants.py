"""Defaults of the rcsd clients, in one place (every one can be overridden per client)."""

from __future__ import annotations

import httpx

# One attempt: a slow teacher batch may take a while to score, a dead host should not.
DEFAULT_TIMEOUT = httpx.Timeout(timeout=120.0, connect=5.0)

# One logical call (all its retries and, for a split batch, all its parts) ends by this many seconds.
# Long enough to ride through a replica restart, short enough to surface a dead service.
DEFAULT_DEADLINE = 300.0
DEFAULT_MAX_RETRIES = 10

# Exponential backoff with jitter: INITIAL_RETRY_DELAY * 2**n, capped, times a factor in [0.75, 1].
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 10.0
# A server's Retry-After is honoured up to this many seconds; longer values fall back to the backoff.
MAX_RETRY_AFTER = 60.0

# A read timeout means the request was sent and the server may still be computing it: resending a
# heavy POST elsewhere doubles the work (and again on every timeout), so by default it is not retried.
DEFAULT_RETRY_READ_TIMEOUTS = False

# A 500 is one request's bug, not a dead replica: a replica is set aside only after this many in a row.
SERVER_ERRORS_BEFORE_SET_ASIDE = 3

# A replica that failed is set aside for REPLICA_COOLDOWN * 2**(failures - 1) seconds, capped.
DEFAULT_REPLICA_COOLDOWN = 5.0
MAX_REPLICA_COOLDOWN = 60.0
# When its cool-down is over, a replica is asked `GET /ready` before it gets work again.
PROBE_TIMEOUT = httpx.Timeout(timeout=2.0)

# Parts of a split batch sent at once.
DEFAULT_MAX_CONCURRENCY = 4

REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_ENV = "RCSD_API_KEY"
