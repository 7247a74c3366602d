"""Clients of the teacher scoring service: `TeacherClient` (blocking) and `AsyncTeacherClient`.

    with TeacherClient(["http://teacher-0:8000", "http://teacher-1:8000"], api_key=key) as teacher:
        teacher.check_compatible(tokenizer)
        responses = teacher.score_batch(groups)  # split to fit the service's limits, in order

Both share every decision through `BaseClient` and `ScorePlan`; they differ only in I/O.

A run must not change teachers halfway: the first `check_compatible` (or else the first answer) pins
the teacher's model revision and tokenizer hash (chat template included), and any later answer with
another raises `TeacherChangedError` (a rolling update swapped the weights) or
`IncompatibleTokenizerError`. `pin_teacher=False` opts out of the revision check (e.g. a teacher
that is meant to be updated during the run); the tokenizer check stays, as token ids depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rcsd.client._base import AsyncAPIClient, SyncAPIClient
from rcsd.client._call import CallOptions, Timeout
from rcsd.client._exceptions import IncompatibleTokenizerError, TeacherChangedError, raise_for_items
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

SCORE_PATH = "/v1/teacher_logprobs"
BATCH_PATH = "/v1/teacher_logprobs/batch"
INFO_PATH = "/v1/info"


@dataclass(frozen=True)
class TeacherPin:
    """What every answer of this run's teacher must carry (None: not pinned)."""

    tokenizer_hash: str | None
    model_revision: str | None


class TeacherClient(SyncAPIClient):
    """Blocking client of one teacher service (one or several replicas)."""

    _info: ServiceInfo | None = None
    _pin: TeacherPin | None = None  # set by check_compatible or the first answer; every answer checked

    def __init__(self, *args: Any, pin_teacher: bool = True, **kwargs: Any) -> None:
        """As `SyncAPIClient`; `pin_teacher=False`: allow the teacher's model revision to change."""
        super().__init__(*args, **kwargs)
        self.pin_teacher = pin_teacher

    def info(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> ServiceInfo:
        """`GET /v1/info` (refreshes the cached limits)."""
        self._info = self._request(
            "GET", INFO_PATH, ServiceInfo, options=self._options(timeout=timeout, request_id=request_id)
        )
        return self._info

    def check_compatible(self, tokenizer: Any, *, vocab_size: int | None = None) -> ServiceInfo:
        """Refuse (IncompatibleTokenizerError) a teacher whose tokenizer is not `tokenizer`.

        Every replica is asked; afterwards every response's tokenizer_hash (and model revision,
        unless `pin_teacher=False`) must be the one seen here. The
        teacher's vocab_size (its output rows, maybe padded) must hold every id of `tokenizer`;
        pass `vocab_size` (e.g. the student's logits width) to require it exactly.
        """
        expected = _expected_identity(tokenizer, vocab_size)
        for replica in self.replicas:
            info = self._request("GET", INFO_PATH, ServiceInfo, options=self._options(), pinned=replica)
            _check_identity(info, replica.url, *expected)
            self._pin = _pinned(self._pin, info, replica.url, self.pin_teacher)
        self._info = info
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
        return self._verified([response])[0]

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
        outcomes = plan.responses()
        self._verified([o for o in outcomes if not isinstance(o, ItemError)])
        return raise_for_items(outcomes)

    def _verified(self, responses: list[TeacherResponse]) -> list[TeacherResponse]:
        self._pin = _verified(responses, self._pin, self.pin_teacher)
        return responses


class AsyncTeacherClient(AsyncAPIClient):
    """Async client of one teacher service (one or several replicas)."""

    _info: ServiceInfo | None = None
    _pin: TeacherPin | None = None

    def __init__(self, *args: Any, pin_teacher: bool = True, **kwargs: Any) -> None:
        """As `AsyncAPIClient`; `pin_teacher=False`: allow the teacher's model revision to change."""
        super().__init__(*args, **kwargs)
        self.pin_teacher = pin_teacher

    async def info(self, *, timeout: Timeout | None = None, request_id: str | None = None) -> ServiceInfo:
        """`GET /v1/info` (refreshes the cached limits)."""
        options = self._options(timeout=timeout, request_id=request_id)
        self._info = await self._request("GET", INFO_PATH, ServiceInfo, options=options)
        return self._info

    async def check_compatible(self, tokenizer: Any, *, vocab_size: int | None = None) -> ServiceInfo:
        """Refuse (IncompatibleTokenizerError) a teacher whose tokenizer is not `tokenizer`.

        Every replica is asked; afterwards every response's tokenizer_hash (and model revision,
        unless `pin_teacher=False`) must be the one seen here. The
        teacher's vocab_size (its output rows, maybe padded) must hold every id of `tokenizer`;
        pass `vocab_size` (e.g. the student's logits width) to require it exactly.
        """
        expected = _expected_identity(tokenizer, vocab_size)
        for replica in self.replicas:
            info = await self._request("GET", INFO_PATH, ServiceInfo, options=self._options(), pinned=replica)
            _check_identity(info, replica.url, *expected)
            self._pin = _pinned(self._pin, info, replica.url, self.pin_teacher)
        self._info = info
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
        return self._verified([response])[0]

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
        outcomes = plan.responses()
        self._verified([o for o in outcomes if not isinstance(o, ItemError)])
        return raise_for_items(outcomes)

    def _verified(self, responses: list[TeacherResponse]) -> list[TeacherResponse]:
        self._pin = _verified(responses, self._pin, self.pin_teacher)
        return responses


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


def _pinned(pin: TeacherPin | None, info: ServiceInfo, url: str, pin_revision: bool) -> TeacherPin:
    """The pin after a replica's /v1/info: replicas of one teacher must serve the same revision."""
    revision = info.model.revision if pin_revision else None
    if pin is not None and pin.model_revision is not None and revision != pin.model_revision:
        raise TeacherChangedError(
            f"the teacher at {url} serves {info.model.name} revision {revision}, another replica "
            f"revision {pin.model_revision}: replicas of one teacher must serve the same weights"
        )
    return TeacherPin(tokenizer_hash=info.model.tokenizer_hash, model_revision=revision)


def _verified(
    responses: list[TeacherResponse], pin: TeacherPin | None, pin_revision: bool
) -> TeacherPin | None:
    """Check every answer against the pin (the first answer pins when nothing has); the pin after."""
    for response in responses:
        if pin is None:
            revision = response.model_revision if pin_revision else None
            pin = TeacherPin(tokenizer_hash=response.tokenizer_hash, model_revision=revision)
        if pin.tokenizer_hash is not None and response.tokenizer_hash != pin.tokenizer_hash:
            raise IncompatibleTokenizerError(
                f"a teacher replica answered with tokenizer_hash {response.tokenizer_hash}, not the "
                f"{pin.tokenizer_hash} pinned at the start of the run (its tokenizer or chat template "
                "changed: token ids and prompts would no longer mean what they did)"
            )
        if pin_revision and pin.model_revision is not None and response.model_revision != pin.model_revision:
            raise TeacherChangedError(
                f"a teacher replica answered with {response.model} revision {response.model_revision}, "
                f"not the {pin.model_revision} pinned at the start of the run: the teacher changed "
                "during the run (a rolling update?). Restart the run against one revision, or pass "
                "pin_teacher=False to allow it"
            )
    return pin
