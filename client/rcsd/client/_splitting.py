"""Splitting a teacher batch into requests that fit the service's limits, and joining the answers.

A group (one question, its completions) becomes one or more parts: consecutive slices of its
completions, each within `max_completions_per_group` and `max_completion_tokens_per_request`.
Parts are packed, in order, into requests within `max_groups_per_batch` and the token budget.
The teacher scores each completion independently given the group's context, so the parts'
per-completion results, concatenated in order, are the group's result.

One exception: `rationale="auto"` asks the teacher to write a rationale, and two parts must not
get two different ones. The first part of such a group goes in the first round; the other parts
follow in a second round with the rationale the teacher wrote, and the joined group is checked
to have one context.

A group the teacher could not score (an item error) fails as a whole, whichever part failed: its
error comes back with the field path in the caller's indices (`groups.3.completions.5`, not the
sub-request's `groups.0.completions.1`), and the other groups keep their results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rcsd.client._exceptions import LimitExceededError, RcsdError
from rcsd.client.protocol import (
    AUTO_RATIONALE,
    CompletionScores,
    ItemError,
    ItemFailed,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)

_UNLIMITED = 2**62
_ITEM_FIELD = re.compile(r"^(\w+)\.(\d+)(?:\.completions\.(\d+))?")


@dataclass(frozen=True)
class TeacherLimits:
    """The limits of `GET /v1/info` that a request must fit; a missing key means no limit."""

    max_top_k: int = _UNLIMITED
    max_completions_per_group: int = _UNLIMITED
    max_groups_per_batch: int = _UNLIMITED
    max_completion_tokens_per_request: int = _UNLIMITED
    max_model_len: int = _UNLIMITED

    @classmethod
    def from_info(cls, limits: dict[str, int]) -> TeacherLimits:
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in limits.items() if key in known and value > 0})


@dataclass(frozen=True)
class Part:
    """Completions [start, stop) of group `group`."""

    group: int
    start: int
    stop: int
    tokens: int


class ScorePlan:
    """Rounds of batch requests that fit; `record` each round's answers, then `responses()`."""

    def __init__(self, groups: Sequence[TeacherRequest], limits: TeacherLimits) -> None:
        self._groups = list(groups)
        self._limits = limits
        parts_by_group = [_split_group(i, group, limits) for i, group in enumerate(self._groups)]
        self._parts = [part for parts in parts_by_group for part in parts]
        self._pending = [p for p in self._parts if not self._waits_for_rationale(p, parts_by_group)]
        self._deferred = [p for p in self._parts if self._waits_for_rationale(p, parts_by_group)]
        self._round: list[list[Part]] = []
        self._results: dict[Part, TeacherResponse] = {}
        self._errors: dict[int, ItemError] = {}  # by group: its first failed part's error

    def _waits_for_rationale(self, part: Part, parts_by_group: list[list[Part]]) -> bool:
        group = self._groups[part.group]
        return group.rationale == AUTO_RATIONALE and part.start > 0 and len(parts_by_group[part.group]) > 1

    @property
    def unsplit(self) -> bool:
        """True when the whole plan is one request holding every group unchanged."""
        return len(self._parts) == len(self._groups) and len(_pack(self._parts, self._limits)) == 1

    def next_round(self) -> list[TeacherBatchRequest]:
        """The requests to send now (empty when done)."""
        if self._pending:
            parts, self._pending = self._pending, []
        else:  # a group whose first part failed has no rationale to send with the rest
            parts, self._deferred = [p for p in self._deferred if p.group not in self._errors], []
        self._round = _pack(parts, self._limits)
        return [TeacherBatchRequest(groups=[self._request(p) for p in chunk]) for chunk in self._round]

    def record(self, answers: Sequence[TeacherBatchResponse]) -> None:
        for chunk, answer in zip(self._round, answers, strict=True):
            if len(answer.results) != len(chunk):
                raise RcsdError(
                    f"the teacher answered {len(answer.results)} groups to a request of {len(chunk)}"
                )
            for part, item in zip(chunk, answer.results, strict=True):
                if isinstance(item, ItemFailed):
                    self._errors.setdefault(part.group, caller_error(item.error, part.group, part.start))
                    continue
                result = item.result
                if len(result.completions) != part.stop - part.start:
                    raise RcsdError(
                        f"the teacher scored {len(result.completions)} completions of group {part.group} "
                        f"where {part.stop - part.start} were sent"
                    )
                self._results[part] = result

    def responses(self) -> list[TeacherResponse | ItemError]:
        """One response (or error) per group, in the order of the groups, completions in their order."""
        joined: list[TeacherResponse | ItemError] = []
        for index in range(len(self._groups)):
            if index in self._errors:
                joined.append(self._errors[index])
                continue
            parts = [p for p in self._parts if p.group == index]
            results = [self._results[p] for p in parts]
            first = results[0]
            for other in results[1:]:
                if (other.context_length, other.context_ids) != (first.context_length, first.context_ids):
                    raise RcsdError(
                        f"group {index} was split into {len(parts)} requests and the teacher built "
                        f"different contexts for them (context_length {first.context_length} vs "
                        f"{other.context_length}); send it with fewer completions or a fixed rationale"
                    )
            completions: list[CompletionScores] = [c for r in results for c in r.completions]
            joined.append(
                first if len(results) == 1 else first.model_copy(update={"completions": completions})
            )
        return joined

    def _request(self, part: Part) -> TeacherRequest:
        group = self._groups[part.group]
        if part.start == 0 and part.stop == len(group.completions):
            return group
        update: dict[str, object] = {"completions": group.completions[part.start : part.stop]}
        if part.start > 0 and group.rationale == AUTO_RATIONALE:
            first = next(p for p in self._parts if p.group == part.group)
            rationale = self._results[first].rationale
            if rationale is None:
                raise RcsdError(
                    f"group {part.group} asked for rationale='auto' and had to be split, but the teacher "
                    "did not return the rationale it wrote"
                )
            update["rationale"] = rationale
        return group.model_copy(update=update)


def caller_error(error: ItemError, index: int, completion_offset: int = 0) -> ItemError:
    """An item error of a sub-request, its field path (and the message's copy of it) renumbered:
    item -> `index`, completion k -> `completion_offset + k`."""
    if error.field is None or not (match := _ITEM_FIELD.match(error.field)):
        return error
    collection, _, completion = match.groups()
    renumbered = f"{collection}.{index}"
    if completion is not None:
        renumbered += f".completions.{completion_offset + int(completion)}"
    field = renumbered + error.field[match.end() :]
    message = (
        field + error.message[len(error.field) :] if error.message.startswith(error.field) else error.message
    )
    return error.model_copy(update={"field": field, "message": message})


def _split_group(index: int, group: TeacherRequest, limits: TeacherLimits) -> list[Part]:
    if group.top_k > limits.max_top_k:
        raise LimitExceededError(
            f"group {index}: top_k {group.top_k} > the teacher's max_top_k {limits.max_top_k}"
        )
    token_budget = limits.max_completion_tokens_per_request
    parts: list[Part] = []
    start, tokens = 0, 0
    for position, completion in enumerate(group.completions):
        length = len(completion)
        if length > token_budget or length > limits.max_model_len:
            raise LimitExceededError(
                f"group {index}, completion {position}: {length} tokens cannot fit any request "
                f"(max_completion_tokens_per_request {token_budget}, max_model_len {limits.max_model_len})"
            )
        if position - start == limits.max_completions_per_group or tokens + length > token_budget:
            parts.append(Part(index, start, position, tokens))
            start, tokens = position, 0
        tokens += length
    parts.append(Part(index, start, len(group.completions), tokens))
    return parts


def _pack(parts: Sequence[Part], limits: TeacherLimits) -> list[list[Part]]:
    """Consecutive parts into requests, each within the group count and the token budget."""
    chunks: list[list[Part]] = []
    tokens = 0
    for part in parts:
        full = chunks and (
            len(chunks[-1]) == limits.max_groups_per_batch
            or tokens + part.tokens > limits.max_completion_tokens_per_request
        )
        if not chunks or full:
            chunks.append([])
            tokens = 0
        chunks[-1].append(part)
        tokens += part.tokens
    return chunks
