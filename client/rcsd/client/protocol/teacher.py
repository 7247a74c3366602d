"""Wire schemas of the teacher scoring service (`POST /v1/teacher_logprobs`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rcsd.client.protocol.arrays import Float32Array1D, Float32Array2D, Int32Array1D, Int32Array2D
from rcsd.client.protocol.batch import ItemFailed, ItemOk
from rcsd.client.protocol.common import Criterion, ResponseModel, WireModel
from rcsd.client.protocol.limits import (
    MAX_CRITERIA,
    MAX_MESSAGES,
    MAX_PROMPT_CHARS,
    MAX_QUESTION_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_REFERENCE_CHARS,
    MAX_TEMPLATE_KWARGS,
)
from rcsd.client.protocol.rubric import RubricBounds

# Answer modes: the completion answers the question after the student's prompt. Rubric-writer modes
# (Stage I): the completion is a rubric written after the rubric service's designer prompt.
ContextMode = Literal[
    "rubric", "rubric+reference", "reference", "none", "rubric_writer", "rubric_writer+reference_rubric"
]
CONTEXT_MODES: tuple[str, ...] = (
    "rubric", "rubric+reference", "reference", "none", "rubric_writer", "rubric_writer+reference_rubric"
)  # fmt: skip
RUBRIC_WRITER_MODES: frozenset[str] = frozenset({"rubric_writer", "rubric_writer+reference_rubric"})
MODES_SHOWING_RUBRIC: frozenset[str] = frozenset({"rubric", "rubric+reference"})
MODES_SHOWING_REFERENCE: frozenset[str] = frozenset({"rubric+reference", "reference"})
AUTO_RATIONALE = "auto"

TEMPLATE_KWARG_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
TemplateValue = bool | int | float | Annotated[str, Field(max_length=1_000)]

JSON_MEDIA_TYPE = "application/json"
MSGPACK_MEDIA_TYPE = "application/x-msgpack"


class ChatMessage(WireModel):
    """One turn of the student's prompt, as the chat template receives it."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class TeacherRequest(WireModel):
    """One prompt group: a question and the student's sampled completions for it.

    `completions` are the student's token ids verbatim; they are never decoded and
    re-encoded. `rationale="auto"` asks the teacher to write its own rationale first.
    A rationale (`rationale` text or `rationale_ids`) makes the context reason-first: in the `release`
    templates [analysis prompt] + [rationale] + [raw-text transition] + completion. `rationale_ids`
    are token ids as the caller sampled them (the trainer's analysis, end-of-turn token included):
    sent as ids because decoding and re-encoding sampled BPE tokens does not give them back.
    `template_version` picks the teacher's templates (default: the service's); the `*_thinking`
    flags are the chat template's `enable_thinking` for the student's prompt (`none` mode), the
    teacher's context, and the analysis prompt (None: not passed, the template's default).
    In the rubric-writer modes the completions are rubrics the student wrote after the designer
    prompt for (`question`, `reference_answer`, `rubric_bounds`), and `rubric_writer+reference_rubric`
    shows the teacher `reference_rubric` too.

    The student's prompt as it saw it: `messages` (a system prompt, few-shot turns, then the
    question as the last user turn; None: the teacher's own student-prompt template) and
    `chat_template_kwargs` passed to its chat template (e.g. `{"enable_thinking": false}`, as vLLM's
    field of that name). Answer modes only: the rubric-writer modes render the designer prompt.
    """

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    reference_answer: str | None = Field(default=None, max_length=MAX_REFERENCE_CHARS)
    rubric: list[Criterion] | None = Field(default=None, max_length=MAX_CRITERIA)
    rationale: str | None = Field(default=None, max_length=MAX_RATIONALE_CHARS)
    rationale_ids: list[int] | None = Field(default=None, min_length=1, max_length=MAX_RATIONALE_CHARS)
    template_version: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    student_thinking: bool | None = None
    teacher_thinking: bool | None = None
    analysis_thinking: bool | None = None
    context_mode: ContextMode = "rubric+reference"
    reference_rubric: list[Criterion] | None = Field(
        default=None, max_length=MAX_CRITERIA, validate_default=True, description="rubric_writer modes"
    )
    rubric_bounds: RubricBounds = Field(
        default_factory=RubricBounds,
        description="rubric_writer modes: the bounds the designer prompt asked for",
    )
    completions: list[list[int]] = Field(min_length=1)
    top_k: int = Field(default=0, ge=0)
    # Bounded below: logits / 1e-210 overflow to inf and every log-prob came back NaN (found by fuzzing).
    temperature: float = Field(default=1.0, ge=1e-3, le=10.0)
    return_context_ids: bool = False
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    chat_template_kwargs: dict[Annotated[str, Field(pattern=TEMPLATE_KWARG_NAME)], TemplateValue] | None = (
        Field(default=None, max_length=MAX_TEMPLATE_KWARGS)
    )

    @field_validator("messages")
    @classmethod
    def _messages_are_a_prompt(cls, messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
        if messages is None:
            return None
        if any(m.role == "system" for m in messages[1:]):
            raise ValueError("a system message may only come first")
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's (the prompt the completions answer)")
        if not messages[-1].content.strip():
            raise ValueError("the last user message must not be blank")
        if sum(len(m.content) for m in messages) > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages' contents together are over {MAX_PROMPT_CHARS} characters")
        return messages

    @field_validator("reference_rubric")
    @classmethod
    def _reference_rubric_for_its_mode(
        cls, value: list[Criterion] | None, info: ValidationInfo
    ) -> list[Criterion] | None:
        # a field validator (context_mode is validated before it), so that the 422 names this field
        mode = info.data.get("context_mode")
        if mode == "rubric_writer+reference_rubric" and not value:
            raise ValueError(f"context_mode {mode!r} needs a non-empty reference_rubric")
        return value

    @model_validator(mode="after")
    def _context_is_complete(self) -> TeacherRequest:
        if self.rationale is not None and self.rationale_ids is not None:
            raise ValueError("give a rationale as text or as rationale_ids, not both")
        if self.context_mode in RUBRIC_WRITER_MODES and (self.messages or self.chat_template_kwargs):
            raise ValueError(
                f"context_mode {self.context_mode!r} renders the rubric designer prompt: "
                "messages and chat_template_kwargs are for the answer modes"
            )
        if self.context_mode in MODES_SHOWING_RUBRIC and not self.rubric:
            raise ValueError(f"context_mode {self.context_mode!r} needs a non-empty rubric")
        if self.context_mode in MODES_SHOWING_REFERENCE and not self.reference_answer:
            raise ValueError(f"context_mode {self.context_mode!r} needs a reference_answer")
        return self


class CompletionScores(ResponseModel):
    """Teacher scores of one completion; position t scores `token_ids[t]`."""

    token_ids: Int32Array1D
    logprobs: Float32Array1D
    topk_ids: Int32Array2D | None = None
    topk_logprobs: Float32Array2D | None = None


class TeacherResponse(ResponseModel):
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


class TeacherBatchResponse(ResponseModel):
    """One item per group, in request order: the group's scores or why that group failed."""

    results: list[TeacherBatchItem]
