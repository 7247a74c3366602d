"""Wire schemas of the teacher scoring service (`POST /teacher_logprobs`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rcsd.client.protocol.arrays import Float32Array1D, Float32Array2D, Int32Array1D, Int32Array2D
from rcsd.client.protocol.batch import ItemFailed, ItemOk
from rcsd.client.protocol.common import Criterion, WireModel
from rcsd.client.protocol.limits import (
    MAX_CRITERIA,
    MAX_QUESTION_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_REFERENCE_CHARS,
)

ContextMode = Literal["rubric", "rubric+reference", "reference", "none"]
CONTEXT_MODES: tuple[str, ...] = ("rubric", "rubric+reference", "reference", "none")
AUTO_RATIONALE = "auto"

JSON_MEDIA_TYPE = "application/json"
MSGPACK_MEDIA_TYPE = "application/x-msgpack"


class TeacherRequest(WireModel):
    """One prompt group: a question and the student's sampled completions for it.

    `completions` are the student's token ids verbatim; they are never decoded and
    re-encoded. `rationale="auto"` asks the teacher to write its own rationale first.
    """

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    reference_answer: str | None = Field(default=None, max_length=MAX_REFERENCE_CHARS)
    rubric: list[Criterion] | None = Field(default=None, max_length=MAX_CRITERIA)
    rationale: str | None = Field(default=None, max_length=MAX_RATIONALE_CHARS)
    context_mode: ContextMode = "rubric+reference"
    completions: list[list[int]] = Field(min_length=1)
    top_k: int = Field(default=0, ge=0)
    # Bounded below: logits / 1e-210 overflow to inf and every log-prob came back NaN (found by fuzzing).
    temperature: float = Field(default=1.0, ge=1e-3, le=10.0)
    return_context_ids: bool = False

    @model_validator(mode="after")
    def _context_is_complete(self) -> TeacherRequest:
        if "rubric" in self.context_mode and not self.rubric:
            raise ValueError(f"context_mode {self.context_mode!r} needs a non-empty rubric")
        if "reference" in self.context_mode and not self.reference_answer:
            raise ValueError(f"context_mode {self.context_mode!r} needs a reference_answer")
        return self


class CompletionScores(WireModel):
    """Teacher scores of one completion; position t scores `token_ids[t]`."""

    token_ids: Int32Array1D
    logprobs: Float32Array1D
    topk_ids: Int32Array2D | None = None
    topk_logprobs: Float32Array2D | None = None


class TeacherResponse(WireModel):
    completions: list[CompletionScores]
    context_length: int
    context_ids: list[int] | None = None
    rationale: str | None = None
    model: str
    model_revision: str
    tokenizer_hash: str
    backend: Literal["hf", "vllm"]
    template_version: str


class TeacherBatchRequest(WireModel):
    groups: list[TeacherRequest] = Field(min_length=1)


TeacherBatchItem = Annotated[ItemOk[TeacherResponse] | ItemFailed, Field(discriminator="ok")]


class TeacherBatchResponse(WireModel):
    """One item per group, in request order: the group's scores or why that group failed."""

    results: list[TeacherBatchItem]
