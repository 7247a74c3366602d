"""Clients of the rubric service: `RubricClient` (blocking) and `AsyncRubricClient`.

with RubricClient("http://rubric:8001", api_key=key) as rubrics:
    rubric = rubrics.generate(RubricRequest(question=q, reference_answer=a))
    again = rubrics.get(rubric.rubric_id)
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from rcsd.client._base import AsyncAPIClient, SyncAPIClient
from rcsd.client._call import CallOptions, Timeout
from rcsd.client._exceptions import RcsdError, raise_for_items
from rcsd.client._splitting import caller_error
from rcsd.client.protocol import (
    ItemError,
    ItemFailed,
    RubricBatchRequest,
    RubricBatchResponse,
    RubricRequest,
    RubricResponse,
    ServiceInfo,
)

GENERATE_PATH = "/v1/rubrics"
BATCH_PATH = "/v1/rubrics/batch"
INFO_PATH = "/v1/info"


class RubricClient(SyncAPIClient):
    """Blocking client of one rubric service (one or several replicas)."""

    _info: ServiceInfo | None = None

    def info(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> ServiceInfo:
        """`GET /v1/info` (refreshes the cached limits)."""
        options = self._options(timeout=timeout, request_id=request_id)
        self._info = self._request("GET", INFO_PATH, ServiceInfo, options=options)
        return self._info

    def generate(
        self, request: RubricRequest, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> RubricResponse:
        options = self._options(timeout=timeout, request_id=request_id)
        return self._request("POST", GENERATE_PATH, RubricResponse, options=options, body=request)

    def generate_batch(
        self,
        requests: Sequence[RubricRequest],
        *,
        timeout: Timeout | None = None,
        request_id: str | None = None,
    ) -> list[RubricResponse]:
        """Rubrics for many questions, in order (split by the service's `max_batch`).

        When some fail on their own (e.g. no valid rubric within the service's max_attempts),
        raises `BatchError` holding every other rubric and each failed request's error.
        """
        if not requests:
            return []
        options = self._options(timeout=timeout, request_id=request_id)
        batches = _batches(requests, self._max_batch(options), options)

        def send(item: tuple[RubricBatchRequest, CallOptions]) -> RubricBatchResponse:
            return self._request("POST", BATCH_PATH, RubricBatchResponse, options=item[1], body=item[0])

        return _joined(self._map(send, batches), len(requests))

    def get(
        self, rubric_id: str, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> RubricResponse:
        """A stored rubric by id (NotFoundError if unknown)."""
        options = self._options(timeout=timeout, request_id=request_id)
        return self._request(
            "GET", f"{GENERATE_PATH}/{quote(rubric_id, safe='')}", RubricResponse, options=options
        )

    def _max_batch(self, options: CallOptions) -> int | None:
        if self._info is None:
            self._info = self._request("GET", INFO_PATH, ServiceInfo, options=options.part("info"))
        return self._info.limits.get("max_batch")


class AsyncRubricClient(AsyncAPIClient):
    """Async client of one rubric service (one or several replicas)."""

    _info: ServiceInfo | None = None

    async def info(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> ServiceInfo:
        """`GET /v1/info` (refreshes the cached limits)."""
        options = self._options(timeout=timeout, request_id=request_id)
        self._info = await self._request("GET", INFO_PATH, ServiceInfo, options=options)
        return self._info

    async def generate(
        self, request: RubricRequest, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> RubricResponse:
        options = self._options(timeout=timeout, request_id=request_id)
        return await self._request("POST", GENERATE_PATH, RubricResponse, options=options, body=request)

    async def generate_batch(
        self,
        requests: Sequence[RubricRequest],
        *,
        timeout: Timeout | None = None,
        request_id: str | None = None,
    ) -> list[RubricResponse]:
        """Rubrics for many questions, in order (split by the service's `max_batch`).

        When some fail on their own (e.g. no valid rubric within the service's max_attempts),
        raises `BatchError` holding every other rubric and each failed request's error.
        """
        if not requests:
            return []
        options = self._options(timeout=timeout, request_id=request_id)
        batches = _batches(requests, await self._max_batch(options), options)

        async def send(item: tuple[RubricBatchRequest, CallOptions]) -> RubricBatchResponse:
            return await self._request("POST", BATCH_PATH, RubricBatchResponse, options=item[1], body=item[0])

        return _joined(await self._map(send, batches), len(requests))

    async def get(
        self, rubric_id: str, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> RubricResponse:
        """A stored rubric by id (NotFoundError if unknown)."""
        options = self._options(timeout=timeout, request_id=request_id)
        path = f"{GENERATE_PATH}/{quote(rubric_id, safe='')}"
        return await self._request("GET", path, RubricResponse, options=options)

    async def _max_batch(self, options: CallOptions) -> int | None:
        if self._info is None:
            self._info = await self._request("GET", INFO_PATH, ServiceInfo, options=options.part("info"))
        return self._info.limits.get("max_batch")


def _batches(
    requests: Sequence[RubricRequest], max_batch: int | None, options: CallOptions
) -> list[tuple[RubricBatchRequest, CallOptions]]:
    size = max_batch if max_batch and max_batch > 0 else len(requests)
    chunks = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
    if len(chunks) == 1:
        return [(RubricBatchRequest(requests=chunks[0]), options)]
    return [(RubricBatchRequest(requests=chunk), options.part(i)) for i, chunk in enumerate(chunks)]


def _joined(answers: Sequence[RubricBatchResponse], expected: int) -> list[RubricResponse]:
    items = [item for answer in answers for item in answer.results]
    if len(items) != expected:
        raise RcsdError(f"the rubric service answered {len(items)} rubrics to {expected} requests")
    outcomes: list[RubricResponse | ItemError] = [
        caller_error(item.error, index) if isinstance(item, ItemFailed) else item.result
        for index, item in enumerate(items)
    ]
    return raise_for_items(outcomes)
