"""The prompts a model answers to, from the one template file each that the services and the trainer use.

- `student_prompt.j2`: the student's question prompt. The teacher scores the student's tokens after it
  (`none` mode) or after a transition that repeats it, and the trainer samples the student from it: if the
  two rendered it differently, the teacher would score answers to a question the student was never asked.
- `designer.j2`: the rubric writer's prompt. The rubric service generates rubrics after it, the Stage I
  trainer samples its student's rubrics after it, and the teacher's `rubric_writer` modes score them
  after it; the output format it describes is `rcsd.client.protocol.rubric_format`.

Templates live in `templates/<version>/`; the rubric service names its version `rubric-<version>`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

Message = dict[str, str]


DESIGNER_VERSION = "v2"  # the rubric service's default template version


@lru_cache(maxsize=16)
def _template(name: str, version: str) -> jinja2.Template:
    path = resources.files(__package__) / "templates" / version / f"{name}.j2"
    if not path.is_file():
        raise ValueError(f"no {name} template version {version!r} in {__package__}")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(path.read_text(encoding="utf-8"))


def student_template(version: str) -> jinja2.Template:
    """The compiled template of `version`; a ValueError when there is none (call it early to fail early)."""
    return _template("student_prompt", version)


def designer_template(version: str) -> jinja2.Template:
    """The compiled rubric writer's template of `version`; a ValueError when there is none."""
    return _template("designer", version)


def student_prompt_text(question: str, version: str = "v1") -> str:
    """The text of the student's user turn for `question` (template `version`)."""
    return student_template(version).render(question=question).strip()


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


def chat_prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """`messages` rendered with the model's chat template, ending in the assistant generation prompt.

    Rendered as text, then tokenized without special tokens: the chat template already wrote them, and
    a tokenizer that adds a BOS would otherwise add a second one.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
