"""Clients of the teacher scoring service: `TeacherClient` (blocking) and `AsyncTeacherClient`.

    with TeacherClient(["http://teacher-0:8000", "http://teacher-1:8000"], api_key=key) as teacher:
        teacher.check_compatible(tokenizer)
        responses = teacher.score_batch(groups)  # split to fit the service's limits, in order

Both share every decision through `BaseClient` and `ScorePlan`; they differ only in I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcsd.client._base import AsyncAPIClient, SyncAPIClient
from rcsd.client._call import CallOptions, Timeout
from rcsd.client._exceptions import IncompatibleTokenizerError, raise_for_items
from rcsd.client._splitting import ScorePlan, TeacherLimits
from rcsd.client.protocol import (
    ItemError,
    ServiceInfo,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.client.tokenizer_identity import tokenizer_hash, tokenizer_vocab_size

SCORE_PATH = "/teacher_logprobs"
BATCH_PATH = "/teacher_logprobs/batch"
INFO_PATH = "/v1/info"


class TeacherClient(SyncAPIClient):
    """Blocking client of one teacher service (one or several replicas)."""

    _info: ServiceInfo | None = None
    _expected_hash: str | None = None  # set by check_compatible; every response is checked against it

    def info(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> ServiceInfo:
        """`GET /v1/info` (refreshes the cached limits)."""
        self._info = self._request(
            "GET", INFO_PATH, ServiceInfo, options=self._options(timeout=timeout, request_id=request_id)
        )
        return self._info

    def check_compatible(self, tokenizer: Any, *, vocab_size: int | None = None) -> ServiceInfo:
        """Refuse (IncompatibleTokenizerError) a teacher whose tokenizer is not `tokenizer`.

        Every replica is asked; afterwards every response's tokenizer_hash is checked too. The
        teacher's vocab_size (its output rows, maybe padded) must hold every id of `tokenizer`;
        pass `vocab_size` (e.g. the student's logits width) to require it exactly.
        """
        expected = _expected_identity(tokenizer, vocab_size)
        for replica in self.replicas:
            info = self._request("GET", INFO_PATH, ServiceInfo, options=self._options(), pinned=replica)
            _check_identity(info, replica.url, *expected)
        self._info, self._expected_hash = info, expected[0]
        return info

    def score(
        self, request: TeacherRequest, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> TeacherResponse:
        """Score one group (split into several requests if it does not fit the limits)."""
        options = self._options(timeout=timeout, request_id=request_id)
        plan = ScorePlan([request], self._limits(options))
        if not plan.unsplit:
            return self._run(plan, options)[0]
        response = self._request("POST", SCORE_PATH, TeacherResponse, options=options, body=request)
        return _verified([response], self._expected_hash)[0]

    def score_batch(
        self,
        groups: Sequence[TeacherRequest],
        *,
        timeout: Timeout | None = None,
        request_id: str | None = None,
    ) -> list[TeacherResponse]:
        """Score many groups; answers in the order of `groups`, whatever the split.

        When some groups fail on their own (e.g. one over max_model_len), raises `BatchError`
        holding every other group's response and each failed group's error.
        """
        if not groups:
            return []
        options = self._options(timeout=timeout, request_id=request_id)
        return self._run(ScorePlan(groups, self._limits(options)), options)

    def _limits(self, options: CallOptions) -> TeacherLimits:
        if self._info is None:
            self._info = self._request("GET", INFO_PATH, ServiceInfo, options=options.part("info"))
        return TeacherLimits.from_info(self._info.limits)

    def _run(self, plan: ScorePlan, options: CallOptions) -> list[TeacherResponse]:
        def send(item: tuple[TeacherBatchRequest, CallOptions]) -> TeacherBatchResponse:
            return self._request("POST", BATCH_PATH, TeacherBatchResponse, options=item[1], body=item[0])

        unsplit, sent = plan.unsplit, 0
        while batches := plan.next_round():
            parts = [options if unsplit else options.part(sent + i) for i in range(len(batches))]
            plan.record(self._map(send, list(zip(batches, parts, strict=True))))
            sent += len(batches)
        return _checked_outcomes(plan, self._expected_hash)


class AsyncTeacherClient(AsyncAPIClient):
    """Async client of one teacher service (one or several replicas)."""

    _info: ServiceInfo | None = None
    _expected_hash: str | None = None

    async def info(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> ServiceInfo:
        """`GET /v1/info` (refreshes the cached limits)."""
        options = self._options(timeout=timeout, request_id=request_id)
        self._info = await self._request("GET", INFO_PATH, ServiceInfo, options=options)
        return self._info

    async def check_compatible(self, tokenizer: Any, *, vocab_size: int | None = None) -> ServiceInfo:
        """Refuse (IncompatibleTokenizerError) a teacher whose tokenizer is not `tokenizer`.

        Every replica is asked; afterwards every response's tokenizer_hash is checked too. The
        teacher's vocab_size (its output rows, maybe padded) must hold every id of `tokenizer`;
        pass `vocab_size` (e.g. the student's logits width) to require it exactly.
        """
        expected = _expected_identity(tokenizer, vocab_size)
        for replica in self.replicas:
            info = await self._request("GET", INFO_PATH, ServiceInfo, options=self._options(), pinned=replica)
            _check_identity(info, replica.url, *expected)
        self._info, self._expected_hash = info, expected[0]
        return info

    async def score(
        self, request: TeacherRequest, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> TeacherResponse:
        """Score one group (split into several requests if it does not fit the limits)."""
        options = self._options(timeout=timeout, request_id=request_id)
        plan = ScorePlan([request], await self._limits(options))
        if not plan.unsplit:
            return (await self._run(plan, options))[0]
        response = await self._request("POST", SCORE_PATH, TeacherResponse, options=options, body=request)
        return _verified([response], self._expected_hash)[0]

    async def score_batch(
        self,
        groups: Sequence[TeacherRequest],
        *,
        timeout: Timeout | None = None,
        request_id: str | None = None,
    ) -> list[TeacherResponse]:
        """Score many groups; answers in the order of `groups`, whatever the split.

        When some groups fail on their own (e.g. one over max_model_len), raises `BatchError`
        holding every other group's response and each failed group's error.
        """
        if not groups:
            return []
        options = self._options(timeout=timeout, request_id=request_id)
        return await self._run(ScorePlan(groups, await self._limits(options)), options)

    async def _limits(self, options: CallOptions) -> TeacherLimits:
        if self._info is None:
            self._info = await self._request("GET", INFO_PATH, ServiceInfo, options=options.part("info"))
        return TeacherLimits.from_info(self._info.limits)

    async def _run(self, plan: ScorePlan, options: CallOptions) -> list[TeacherResponse]:
        async def send(item: tuple[TeacherBatchRequest, CallOptions]) -> TeacherBatchResponse:
            return await self._request(
                "POST", BATCH_PATH, TeacherBatchResponse, options=item[1], body=item[0]
            )

        unsplit, sent = plan.unsplit, 0
        while batches := plan.next_round():
            parts = [options if unsplit else options.part(sent + i) for i in range(len(batches))]
            plan.record(await self._map(send, list(zip(batches, parts, strict=True))))
            sent += len(batches)
        return _checked_outcomes(plan, self._expected_hash)


def _expected_identity(tokenizer: Any, vocab_size: int | None) -> tuple[str, int, bool]:
    """(hash, vocab size, exact?): without an explicit vocab_size, len(tokenizer) must fit."""
    if vocab_size is None:
        return tokenizer_hash(tokenizer), tokenizer_vocab_size(tokenizer), False
    return tokenizer_hash(tokenizer), vocab_size, True


def _check_identity(info: ServiceInfo, url: str, expected_hash: str, vocab_size: int, exact: bool) -> None:
    problems = []
    if info.model.tokenizer_hash != expected_hash:
        problems.append(f"tokenizer_hash {info.model.tokenizer_hash} (yours: {expected_hash})")
    if info.model.vocab_size != vocab_size if exact else info.model.vocab_size < vocab_size:
        relation = "yours" if exact else "your tokenizer has"
        problems.append(f"vocab_size {info.model.vocab_size} ({relation}: {vocab_size})")
    if problems:
        raise IncompatibleTokenizerError(
            f"the teacher at {url} ({info.model.name}) has a different tokenizer: " + "; ".join(problems)
        )


def _checked_outcomes(plan: ScorePlan, expected_hash: str | None) -> list[TeacherResponse]:
    """Every group's response, or `BatchError` (with the good ones) when some groups failed."""
    outcomes = plan.responses()
    _verified([o for o in outcomes if not isinstance(o, ItemError)], expected_hash)
    return raise_for_items(outcomes)


def _verified(responses: list[TeacherResponse], expected_hash: str | None) -> list[TeacherResponse]:
    for response in responses:
        if expected_hash is not None and response.tokenizer_hash != expected_hash:
            raise IncompatibleTokenizerError(
                f"a teacher replica answered with tokenizer_hash {response.tokenizer_hash}, "
                f"not the {expected_hash} checked by check_compatible"
            )
    return responses
