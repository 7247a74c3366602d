"""The prompt texts every part renders, from versioned template files (`templates/<what>/<version>`).

- `student_prompt/<version>.j2`: the student's question prompt. The teacher scores the student's tokens
  after it (`none` mode) or after a transition that repeats it, and the trainer samples the student from
  it: if the two rendered it differently, the teacher would score answers to a question never asked.
- `rubric_judge/<version>.j2`: the rubric judge's prompt, one criterion at a time (`rcsd.trainer.judge`).
- `rubric_designer/<version>.j2`: the rubric writer's prompt. The rubric service generates rubrics after
  it, the Stage I trainer samples its student's rubrics after it, and the teacher's `rubric_writer`
  modes score them after it; the output format it describes is `rcsd.client.protocol.rubric_format`.
- `teacher_context/<version>/*.j2`: the teacher's privileged context, one file per part
  (`TemplateSet`); the service names its version `teacher-<version>`. `release` holds the released
  RCSD texts verbatim (carriegu0818/RCSD, data_collator_reward.py; the rubric writer's,
  data_collator_rubric.py) and is the default; `v1` is rcsd's earlier wording, still selectable.
  `rcsd.client.prompts.teacher_context` renders them into token ids (`render_teacher_context`), the one
  function the teacher service calls too.

Only jinja2 here (no torch): the client package renders what the services render.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

Message = dict[str, str]

DESIGNER_VERSION = "v2"  # the rubric service's default template version
JUDGE_VERSION = "v1"  # the rubric judge's prompt (rcsd.trainer.judge); part of its cache key
TEMPLATE_VERSION = "release"  # the default student prompt and teacher context (the released texts)


def _environment(keep_trailing_newline: bool = False) -> jinja2.Environment:
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=keep_trailing_newline, autoescape=False
    )


@lru_cache(maxsize=16)
def _template(name: str, version: str) -> jinja2.Template:
    path = resources.files(__package__) / "templates" / name / f"{version}.j2"
    if not path.is_file():
        raise ValueError(f"no {name} template version {version!r} in {__package__}")
    return _environment().from_string(path.read_text(encoding="utf-8"))


def student_template(version: str) -> jinja2.Template:
    """The compiled template of `version`; a ValueError when there is none (call it early to fail early)."""
    return _template("student_prompt", version)


def designer_template(version: str) -> jinja2.Template:
    """The compiled rubric writer's template of `version`; a ValueError when there is none."""
    return _template("rubric_designer", version)


def student_prompt_text(question: str, version: str = TEMPLATE_VERSION) -> str:
    """The text of the student's user turn for `question` (template `version`)."""
    return student_template(version).render(question=question).strip()


def judge_prompt_text(
    question: str, response: str, title: str, description: str, pitfall: bool, version: str = JUDGE_VERSION
) -> str:
    """The rubric judge's user turn: does `response` meet (or, for a pitfall, make) this one criterion?"""
    return (
        _template("rubric_judge", version)
        .render(question=question, response=response, title=title, description=description, pitfall=pitfall)
        .strip()
    )


def designer_prompt_text(
    question: str,
    reference_answer: str | None,
    min_criteria: int,
    max_criteria: int,
    version: str = DESIGNER_VERSION,
) -> str:
    """The text of the rubric writer's user turn: write a rubric of min..max criteria for `question`."""
    return (
        designer_template(version)
        .render(
            question=question,
            reference_answer=reference_answer,
            min_criteria=min_criteria,
            max_criteria=max_criteria,
        )
        .strip()
    )


def chat_prompt_ids(
    tokenizer: Any,
    messages: list[Message],
    enable_thinking: bool | None = None,
    template_kwargs: Mapping[str, object] | None = None,
) -> list[int]:
    """`messages` rendered with the model's chat template, ending in the assistant generation prompt.

    Rendered as text, then tokenized without special tokens: the chat template already wrote them, and
    a tokenizer that adds a BOS would otherwise add a second one. `template_kwargs` go to the chat
    template as vLLM's `chat_template_kwargs` do; `enable_thinking` (Qwen3 reads it) overrides theirs
    unless None.
    """
    options = dict(template_kwargs or {})
    if enable_thinking is not None:
        options["enable_thinking"] = enable_thinking
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **options)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class TemplateSet:
    """The parts of one version of a multi-part template, e.g. `templates/teacher_context/v1/*.j2`."""

    def __init__(self, name: str, version: str) -> None:
        folder = resources.files(__package__) / "templates" / name / version
        if not folder.is_dir():
            raise ValueError(f"no {name} template version {version!r} in {__package__}")
        self.version = version
        self._env = _environment()
        self._exact_env = _environment(keep_trailing_newline=True)
        self._sources = {
            entry.name.removesuffix(".j2"): entry.read_text(encoding="utf-8")
            for entry in folder.iterdir()
            if entry.name.endswith(".j2")
        }

    def has(self, name: str) -> bool:
        return name in self._sources

    def render(self, name: str, **values: object) -> str:
        return self._env.from_string(self._sources[name]).render(**values).strip()

    def render_exact(self, name: str, **values: object) -> str:
        """The part as written, every leading and trailing newline kept (the released texts need them)."""
        return self._exact_env.from_string(self._sources[name]).render(**values)
