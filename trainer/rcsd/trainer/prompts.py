"""The student's prompt ids: the same templates and chat rendering as the teacher's `none` and
`rubric_writer` contexts."""

from __future__ import annotations

from typing import Any

from rcsd.client.prompts import (
    DESIGNER_VERSION,
    TEMPLATE_VERSION,
    chat_prompt_ids,
    designer_prompt_text,
    student_prompt_text,
)
from rcsd.client.protocol import RubricBounds


def student_prompt_ids(
    tokenizer: Any,
    question: str,
    template_version: str = TEMPLATE_VERSION,
    enable_thinking: bool | None = None,
) -> list[int]:
    """Token ids the student samples its answer after (ending in the assistant generation prompt).

    `question` is the text the student sees (`Question.prompt_text`, with an MCQ's choices). The teacher
    service renders the same ids for `context_mode="none"` with the same `template_version` and
    `student_thinking=enable_thinking`.
    """
    prompt = student_prompt_text(question, template_version)
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}], enable_thinking)


def rubric_prompt_ids(
    tokenizer: Any,
    question: str,
    reference_answer: str | None,
    bounds: RubricBounds,
    template_version: str = DESIGNER_VERSION,
) -> list[int]:
    """Token ids a rubric writer (Stage I student) writes its rubric after: the rubric service's prompt.

    The teacher service renders the same ids for `context_mode="rubric_writer"` with the same
    `rubric_bounds` and template version, and the rubric service generates after them.
    """
    prompt = designer_prompt_text(
        question, reference_answer, bounds.min_criteria, bounds.max_criteria, template_version
    )
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
