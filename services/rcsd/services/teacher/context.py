"""Builds the teacher's privileged context from a request and a versioned template set.

Layouts (chat messages; the completion follows the assistant generation prompt):
- `none`: the student's own prompt (`rcsd.models.prompts`, the template the trainer samples from).
- privileged modes, no rationale: [user: privileged context + transition].
- with a rationale: [user: privileged context + rationale request, assistant: rationale,
  user: transition]. The `auto` rationale is generated from exactly that first turn.
"""

from __future__ import annotations

from typing import Any

from rcsd.client.protocol import TeacherRequest
from rcsd.models.prompts import Message, chat_prompt_ids, student_prompt_text, student_template
from rcsd.services.kit.templates import TemplateSet


class TeacherContext:
    def __init__(self, templates: TemplateSet, tokenizer: Any) -> None:
        student_template(templates.version)  # a version without a student prompt fails at start
        self.templates = templates
        self.tokenizer = tokenizer

    @property
    def version(self) -> str:
        return f"teacher-{self.templates.version}"

    def _privileged(self, request: TeacherRequest) -> str:
        mode = request.context_mode
        return self.templates.render(
            "privileged_context",
            question=request.question,
            reference_answer=request.reference_answer if "reference" in mode else None,
            rubric=request.rubric if "rubric" in mode else None,
        )

    def rationale_messages(self, request: TeacherRequest) -> list[Message]:
        """The prompt a teacher answers with its own rationale (`rationale="auto"`)."""
        text = self._privileged(request) + "\n\n" + self.templates.render("rationale_request")
        return [{"role": "user", "content": text}]

    def messages(self, request: TeacherRequest, rationale: str | None) -> list[Message]:
        student_prompt = student_prompt_text(request.question, self.templates.version)
        if request.context_mode == "none":
            return [{"role": "user", "content": student_prompt}]
        transition = self.templates.render("transition", student_prompt=student_prompt)
        if rationale is None:
            return [{"role": "user", "content": self._privileged(request) + "\n\n" + transition}]
        return [
            *self.rationale_messages(request),
            {"role": "assistant", "content": rationale},
            {"role": "user", "content": transition},
        ]

    def encode(self, messages: list[Message]) -> list[int]:
        """Renders with the model's chat template, ending in the assistant generation prompt."""
        return chat_prompt_ids(self.tokenizer, messages)
