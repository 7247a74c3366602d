"""Wire schemas of the rubric service (`POST /rubrics`) and the rubric's own checks."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from rcsd.client.protocol.batch import ItemFailed, ItemOk
from rcsd.client.protocol.common import (
    MAX_DESCRIPTION_WORDS,
    Criterion,
    ResponseModel,
    WireModel,
    known_fields_only,
)
from rcsd.client.protocol.limits import MAX_CRITERIA, MAX_QUESTION_CHARS, MAX_REFERENCE_CHARS

HARD_MIN_CRITERIA = 1
HARD_MAX_CRITERIA = MAX_CRITERIA


class RubricBounds(WireModel):
    """How many criteria a rubric must have (configurable per request)."""

    min_criteria: int = Field(default=3, ge=HARD_MIN_CRITERIA, le=HARD_MAX_CRITERIA)
    max_criteria: int = Field(default=25, ge=HARD_MIN_CRITERIA, le=HARD_MAX_CRITERIA)

    @model_validator(mode="after")
    def _ordered(self) -> RubricBounds:
        if self.min_criteria > self.max_criteria:
            raise ValueError(
                f"min_criteria ({self.min_criteria}) must not exceed max_criteria ({self.max_criteria})"
            )
        return self


class RubricRequest(WireModel):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    reference_answer: str | None = Field(default=None, max_length=MAX_REFERENCE_CHARS)
    bounds: RubricBounds = Field(default_factory=RubricBounds)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    # the release samples its Stage II rubrics with top_p 0.95, top_k 20; the defaults switch both off
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling; 1.0: off")
    top_k: int = Field(default=0, ge=0, le=2**31 - 1, description="the k likeliest tokens only; 0: off")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_tokens: int = Field(default=1024, ge=16, le=8192)

    @model_validator(mode="after")
    def _question_not_blank(self) -> RubricRequest:
        if not self.question.strip():
            raise ValueError("question must not be blank")
        return self


class RubricResponse(ResponseModel):
    rubric_id: str
    criteria: list[Criterion]
    model: str
    model_revision: str
    template_version: str
    cached: bool
    attempts: int = Field(description="generations tried (0 when served from the store)")

    @field_validator("criteria", mode="before")
    @classmethod
    def _ignore_new_criterion_fields(cls, criteria: Any) -> Any:
        return known_fields_only(Criterion, criteria)


class RubricBatchRequest(WireModel):
    requests: list[RubricRequest] = Field(min_length=1)


RubricBatchItem = Annotated[ItemOk[RubricResponse] | ItemFailed, Field(discriminator="ok")]


class RubricBatchResponse(ResponseModel):
    """One item per request, in order: the rubric or why that request failed."""

    results: list[RubricBatchItem]


def rubric_problems(criteria: list[Criterion], bounds: RubricBounds) -> list[str]:
    """Semantic checks the JSON schema cannot express; an empty list means the rubric is fine."""
    problems: list[str] = []
    if not bounds.min_criteria <= len(criteria) <= bounds.max_criteria:
        problems.append(
            f"criteria count {len(criteria)} outside [{bounds.min_criteria}, {bounds.max_criteria}]"
        )
    if not any(c.weight == -1 for c in criteria):
        problems.append("no pitfall criterion (weight -1)")
    if any(c.weight == 0 for c in criteria):
        problems.append("weight 0 is not allowed (use -1 for a pitfall, 1-10 otherwise)")
    titles = [c.title.strip().lower() for c in criteria]
    if len(set(titles)) != len(titles):
        problems.append("duplicate criterion titles")
    for c in criteria:
        if not c.title.strip() or not c.description.strip():
            problems.append(f"criterion {c.title!r} has a blank title or description")
        if len(c.description.split()) > MAX_DESCRIPTION_WORDS:
            problems.append(f"criterion {c.title!r} description over {MAX_DESCRIPTION_WORDS} words")
    return problems
