"""The one base of the rcsd clients: request building, retry policy, replicas, fan-out.

`BaseClient` holds every decision (which replica, which headers, whether and when to
retry, what error to raise); `SyncAPIClient` and `AsyncAPIClient` differ only in I/O:
httpx.Client + threads + time.sleep versus httpx.AsyncClient + tasks + asyncio.sleep.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from rcsd.client import codec
from rcsd.client._call import Attempts, CallOptions, Timeout, as_timeout, capped, retry_after_s
from rcsd.client._constants import (
    API_KEY_ENV,
    DEFAULT_DEADLINE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REPLICA_COOLDOWN,
    DEFAULT_RETRY_READ_TIMEOUTS,
    DEFAULT_TIMEOUT,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    PROBE_TIMEOUT,
    REQUEST_ID_HEADER,
)
from rcsd.client._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    make_status_error,
)
from rcsd.client._replicas import Replica, ReplicaPool
from rcsd.client._version import __version__
from rcsd.client.protocol import JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE

ModelT = TypeVar("ModelT", bound=BaseModel)
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
SyncClientT = TypeVar("SyncClientT", bound="SyncAPIClient")
AsyncClientT = TypeVar("AsyncClientT", bound="AsyncAPIClient")
_SLOW_NOT_DEAD = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)
_IDEMPOTENT = frozenset({"GET", "HEAD"})


class BaseClient:
    """Settings and every policy decision; no I/O."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        deadline: float = DEFAULT_DEADLINE,
        binary: bool = True,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        replica_cooldown: float = DEFAULT_REPLICA_COOLDOWN,
        retry_read_timeouts: bool = DEFAULT_RETRY_READ_TIMEOUTS,
        http_client: httpx.Client | httpx.AsyncClient | None = None,
    ) -> None:
        """`base_url`: one replica or several. `timeout`: one attempt; `deadline`: the whole call,
        retries and parts included. `binary`: msgpack answers (JSON otherwise). `max_concurrency`:
        parts of a split call in flight at once. `api_key` defaults to $RCSD_API_KEY.
        `retry_read_timeouts`: resend a POST whose answer did not come within `timeout` (off: the
        server may still be computing it; GETs are always retried)."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self._pool = ReplicaPool(urls, cooldown=replica_cooldown)
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.timeout = as_timeout(timeout)
        self.max_retries = max_retries
        self.deadline = deadline
        self.binary = binary
        self.max_concurrency = max(1, max_concurrency)
        self.retry_read_timeouts = retry_read_timeouts
        self._http = http_client or self._default_http()

    def _default_http(self) -> httpx.Client | httpx.AsyncClient:
        raise NotImplementedError

    @property
    def replicas(self) -> list[Replica]:
        return list(self._pool.replicas)

    def _options(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> CallOptions:
        now = time.monotonic()
        return CallOptions(
            request_id=request_id or uuid.uuid4().hex,
            timeout=self.timeout if timeout is None else as_timeout(timeout),
            deadline_at=now + self.deadline,
            started_at=now,
        )

    def _attempts(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        options: CallOptions,
        pinned: Replica | None,
    ) -> Attempts:
        content = body.model_dump_json().encode() if body is not None else None
        return Attempts(method, path, content, options, pinned)

    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient, call: Attempts, replica: Replica
    ) -> httpx.Request:
        headers = {
            "Accept": MSGPACK_MEDIA_TYPE if self.binary else JSON_MEDIA_TYPE,
            "User-Agent": f"rcsd-client/{__version__}",
            REQUEST_ID_HEADER: call.options.request_id,
        }
        if call.content is not None:
            headers["Content-Type"] = JSON_MEDIA_TYPE
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        remaining = call.options.deadline_at - time.monotonic()
        return http.build_request(
            call.method,
            replica.url + call.path,
            content=call.content,
            headers=headers,
            timeout=capped(call.options.timeout, remaining),
        )

    def _parse(self, response: httpx.Response, cast_to: type[ModelT]) -> ModelT:
        try:
            if response.headers.get("content-type", "").startswith(MSGPACK_MEDIA_TYPE):
                return codec.decode(response.content, cast_to)
            return cast_to.model_validate_json(response.content)
        except (ValidationError, ValueError) as exc:
            raise APIResponseValidationError(
                f"{response.request.url} answered {response.status_code} with a body that is not a "
                f"{cast_to.__name__}: {exc}",
                request=response.request,
            ) from exc

    def _after_failure(
        self,
        call: Attempts,
        replica: Replica,
        *,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> float:
        """Book the failure; return how long to wait before the next attempt, or raise."""
        call.count += 1
        retry_after: float | None = None
        if error is not None:
            url = replica.url + call.path
            cls = APITimeoutError if isinstance(error, httpx.TimeoutException) else APIConnectionError
            exc = cls(f"{type(error).__name__} on {url}: {error}", request=error.request)
            if not isinstance(error, _SLOW_NOT_DEAD):
                self._pool.failed(replica)
            elif isinstance(error, httpx.ReadTimeout) and not self._may_resend(call):
                exc._gave_up(call.count, time.monotonic() - call.options.started_at)
                raise exc
        else:
            assert response is not None
            exc = make_status_error(response)
            status = response.status_code
            if not (status in (408, 429) or status >= 500):
                raise exc  # other 4xx: the request itself is wrong; never retried
            retry_after = retry_after_s(response.headers)
            if status == 429:
                self._pool.busy(replica, retry_after)
            elif status == 500:
                self._pool.errored(replica)
            elif status > 500:
                self._pool.failed(replica, retry_after)

        delay = self._retry_delay(call, replica, retry_after)
        now = time.monotonic()
        if call.count > self.max_retries or now + delay >= call.options.deadline_at:
            exc._gave_up(call.count, now - call.options.started_at)
            raise exc
        return delay

    def _may_resend(self, call: Attempts) -> bool:
        """After a read timeout: the request reached the server, which may still be working on it."""
        return call.method in _IDEMPOTENT or self.retry_read_timeouts

    def _retry_delay(self, call: Attempts, replica: Replica, retry_after: float | None) -> float:
        if call.pinned is None and self._pool.has_other_ready(replica):
            return 0.0  # another replica is up: go there now
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
            return retry_after
        backoff = min(INITIAL_RETRY_DELAY * 2 ** (call.count - 1), MAX_RETRY_DELAY)
        return backoff * (1.0 - 0.25 * random.random())

    def _probe_request(self, http: httpx.Client | httpx.AsyncClient, replica: Replica) -> httpx.Request:
        return http.build_request("GET", replica.url + "/ready", timeout=PROBE_TIMEOUT)

    def _probe_done(self, replica: Replica, response: httpx.Response | None) -> bool:
        ok = response is not None and response.status_code == 200
        retry_after = None if response is None else retry_after_s(response.headers)
        self._pool.probed(replica, ok, retry_after)
        return ok


class SyncAPIClient(BaseClient):
    """Blocking I/O: httpx.Client, time.sleep, a thread pool for the parts of a split call."""

    _http: httpx.Client

    def _default_http(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout)

    def _request(
        self,
        method: str,
        path: str,
        cast_to: type[ModelT],
        *,
        options: CallOptions,
        body: BaseModel | None = None,
        pinned: Replica | None = None,
    ) -> ModelT:
        call = self._attempts(method, path, body, options, pinned)
        while True:
            replica = self._acquire(pinned)
            try:
                request = self._build_request(self._http, call, replica)
                try:
                    response = self._http.send(request)
                except httpx.TransportError as error:
                    delay = self._after_failure(call, replica, error=error)
                else:
                    if response.is_success:
                        self._pool.succeeded(replica)
                        return self._parse(response, cast_to)
                    delay = self._after_failure(call, replica, response=response)
            finally:
                self._pool.release(replica)
            time.sleep(delay)

    def _acquire(self, pinned: Replica | None) -> Replica:
        while True:
            replica, probe = self._pool.acquire(pinned)
            if not probe:
                return replica
            try:
                response: httpx.Response | None = self._http.send(self._probe_request(self._http, replica))
            except httpx.TransportError:
                response = None
            if self._probe_done(replica, response):
                return replica
            self._pool.release(replica)

    def _map(self, fn: Callable[[ItemT], ResultT], items: Sequence[ItemT]) -> list[ResultT]:
        """fn over items, at most `max_concurrency` at once, results in order."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)))
        try:
            futures = [pool.submit(fn, item) for item in items]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self: SyncClientT) -> SyncClientT:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncAPIClient(BaseClient):
    """Async I/O: httpx.AsyncClient, asyncio.sleep, tasks under a semaphore for split calls."""

    _http: httpx.AsyncClient

    def _default_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout)

    async def _request(
        self,
        method: str,
        path: str,
        cast_to: type[ModelT],
        *,
        options: CallOptions,
        body: BaseModel | None = None,
        pinned: Replica | None = None,
    ) -> ModelT:
        call = self._attempts(method, path, body, options, pinned)
        while True:
            replica = await self._acquire(pinned)
            try:
                request = self._build_request(self._http, call, replica)
                try:
                    response = await self._http.send(request)
                except httpx.TransportError as error:
                    delay = self._after_failure(call, replica, error=error)
                else:
                    if response.is_success:
                        self._pool.succeeded(replica)
                        return self._parse(response, cast_to)
                    delay = self._after_failure(call, replica, response=response)
            finally:
                self._pool.release(replica)
            await asyncio.sleep(delay)

    async def _acquire(self, pinned: Replica | None) -> Replica:
        while True:
            replica, probe = self._pool.acquire(pinned)
            if not probe:
                return replica
            try:
                response: httpx.Response | None = await self._http.send(
                    self._probe_request(self._http, replica)
                )
            except httpx.TransportError:
                response = None
            if self._probe_done(replica, response):
                return replica
            self._pool.release(replica)

    async def _map(self, fn: Callable[[ItemT], Awaitable[ResultT]], items: Sequence[ItemT]) -> list[ResultT]:
        """fn over items, at most `max_concurrency` at once, results in order."""
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def bounded(item: ItemT) -> ResultT:
            async with semaphore:
                return await fn(item)

        tasks = [asyncio.ensure_future(bounded(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one part failed (or we were cancelled): stop the others
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self: AsyncClientT) -> AsyncClientT:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
