"""The student's prompt ids: the same template and chat rendering as the teacher's `none` context."""

from __future__ import annotations

from typing import Any

from rcsd.models.prompts import chat_prompt_ids, student_prompt_text


def student_prompt_ids(tokenizer: Any, question: str, template_version: str = "v1") -> list[int]:
    """Token ids the student samples its answer after (ending in the assistant generation prompt).

    `question` is the text the student sees (`Question.prompt_text`, with an MCQ's choices). The teacher
    service renders the same ids for `context_mode="none"` with the same `template_version`.
    """
    prompt = student_prompt_text(question, template_version)
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
