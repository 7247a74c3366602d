"""The teacher's privileged context: the service's side of `rcsd.client.prompts.teacher_context`.

The layouts themselves live in the client package (`render_teacher_context`), so that the service and
anyone who renders a context without it (a trainer, a stock-vLLM teacher) cannot drift apart. This
class adds what only the service knows: its default template version and the rubric writer's version,
the version names it reports, and the mapping of a request that cannot be rendered to a 422.
"""

from __future__ import annotations

from typing import Any

from rcsd.client.prompts import designer_template
from rcsd.client.prompts.teacher_context import (
    ContextError,
    render_teacher_context,
    request_analysis_prompt_ids,
    teacher_templates,
)
from rcsd.client.protocol import CONTEXT_MODES, RUBRIC_WRITER_MODES, TeacherRequest
from rcsd.services.kit.errors import invalid


class TeacherContext:
    def __init__(self, default_version: str, tokenizer: Any, rubric_version: str) -> None:
        teacher_templates(default_version)  # a version that does not exist fails at start
        designer_template(rubric_version)  # likewise for the rubric writer's prompt
        self.default_version = default_version
        self.rubric_version = rubric_version
        self.tokenizer = tokenizer

    @property
    def version(self) -> str:
        return f"teacher-{self.default_version}"

    def template_of(self, request: TeacherRequest) -> str:
        return request.template_version or self.default_version

    def version_of(self, mode: str, template: str | None = None) -> str:
        """The version name a mode's contexts are rendered with (the rubric writer's prompt too)."""
        name = f"teacher-{template or self.default_version}"
        if mode in RUBRIC_WRITER_MODES:
            return f"{name}+rubric-{self.rubric_version}"
        return name

    def versions(self) -> dict[str, str]:
        return {mode: self.version_of(mode) for mode in CONTEXT_MODES}

    def render(self, request: TeacherRequest, prefix: str, rationale: str | None = None) -> list[int]:
        """The context's ids (`rationale`: the text written for an `auto` request); a 422 if unrenderable."""
        try:
            return render_teacher_context(
                self.tokenizer,
                request,
                self.template_of(request),
                rubric_version=self.rubric_version,
                rationale=rationale,
            )
        except ContextError as exc:
            raise invalid(prefix + exc.field, exc.message) from exc

    def analysis_prompt(self, request: TeacherRequest, prefix: str) -> list[int]:
        """The ids an `auto` rationale is written after (the context starts with them in `release`)."""
        try:
            return request_analysis_prompt_ids(self.tokenizer, request, self.template_of(request))
        except ContextError as exc:
            raise invalid(prefix + exc.field, exc.message) from exc
