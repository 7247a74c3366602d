"""Builds the teacher's privileged context from a request and a versioned template set.

Layouts (chat messages; the completion follows the assistant generation prompt):
- `none`: the student's own prompt (`rcsd.client.prompts`, the template the trainer samples from).
- privileged modes, no rationale: [user: privileged context + transition].
- with a rationale: [user: privileged context + rationale request, assistant: rationale,
  user: transition]. The `auto` rationale is generated from exactly that first turn.
- `rubric_writer`: the rubric writer's own designer prompt (`rcsd.client.prompts`, the rubric
  service's template `rubric_version`), the plain on-policy context of Stage I.
- `rubric_writer+reference_rubric`: [user: question, reference answer and the reference rubric in
  the generation format (`rubric_writer_context`) + a transition that repeats the designer prompt].
"""

from __future__ import annotations

from typing import Any

from rcsd.client.prompts import (
    Message,
    TemplateSet,
    chat_prompt_ids,
    designer_prompt_text,
    designer_template,
    student_prompt_text,
    student_template,
)
from rcsd.client.protocol import CONTEXT_MODES, RUBRIC_WRITER_MODES, TeacherRequest
from rcsd.client.protocol.rubric_format import to_generation_text
from rcsd.client.protocol.teacher import MODES_SHOWING_REFERENCE, MODES_SHOWING_RUBRIC


class TeacherContext:
    def __init__(self, templates: TemplateSet, tokenizer: Any, rubric_version: str) -> None:
        student_template(templates.version)  # a version without a student prompt fails at start
        designer_template(rubric_version)  # likewise for the rubric writer's prompt
        self.templates = templates
        self.rubric_version = rubric_version
        self.tokenizer = tokenizer

    @property
    def version(self) -> str:
        return f"teacher-{self.templates.version}"

    def version_of(self, mode: str) -> str:
        """The template version a mode's contexts are rendered with (the rubric writer's prompt too)."""
        if mode in RUBRIC_WRITER_MODES:
            return f"{self.version}+rubric-{self.rubric_version}"
        return self.version

    def versions(self) -> dict[str, str]:
        return {mode: self.version_of(mode) for mode in CONTEXT_MODES}

    def _privileged(self, request: TeacherRequest) -> str:
        mode = request.context_mode
        return self.templates.render(
            "privileged_context",
            question=request.question,
            reference_answer=request.reference_answer if mode in MODES_SHOWING_REFERENCE else None,
            rubric=request.rubric if mode in MODES_SHOWING_RUBRIC else None,
        )

    def rationale_messages(self, request: TeacherRequest) -> list[Message]:
        """The prompt a teacher answers with its own rationale (`rationale="auto"`)."""
        text = self._privileged(request) + "\n\n" + self.templates.render("rationale_request")
        return [{"role": "user", "content": text}]

    def messages(self, request: TeacherRequest, rationale: str | None) -> list[Message]:
        if request.context_mode in RUBRIC_WRITER_MODES:
            return self._rubric_writer_messages(request)
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

    def _rubric_writer_messages(self, request: TeacherRequest) -> list[Message]:
        bounds = request.rubric_bounds
        designer_prompt = designer_prompt_text(
            request.question,
            request.reference_answer,
            bounds.min_criteria,
            bounds.max_criteria,
            self.rubric_version,
        )
        if request.context_mode == "rubric_writer":
            return [{"role": "user", "content": designer_prompt}]
        assert request.reference_rubric  # the wire schema requires it in this mode
        privileged = self.templates.render(
            "rubric_writer_context",
            question=request.question,
            reference_answer=request.reference_answer,
            reference_rubric=to_generation_text(request.reference_rubric),
        )
        transition = self.templates.render("rubric_writer_transition", designer_prompt=designer_prompt)
        return [{"role": "user", "content": privileged + "\n\n" + transition}]

    def encode(self, messages: list[Message]) -> list[int]:
        """Renders with the model's chat template, ending in the assistant generation prompt."""
        return chat_prompt_ids(self.tokenizer, messages)
