"""The student's prompt, from the one template file that the teacher service and the trainer both use.

The teacher scores the student's tokens after the student's own prompt (`none` mode) or after a
transition that repeats it, and the trainer samples the student from it: if the two rendered it
differently, the teacher would score answers to a question the student was never asked. So the template
lives here (`templates/<version>/student_prompt.j2`) and both sides render and tokenize it with these
two functions.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

Message = dict[str, str]


@lru_cache(maxsize=8)
def student_template(version: str) -> jinja2.Template:
    """The compiled template of `version`; a ValueError when there is none (call it early to fail early)."""
    path = resources.files(__package__) / "templates" / version / "student_prompt.j2"
    if not path.is_file():
        raise ValueError(f"no student prompt template version {version!r} in {__package__}")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(path.read_text(encoding="utf-8"))


def student_prompt_text(question: str, version: str = "v1") -> str:
    """The text of the student's user turn for `question` (template `version`)."""
    return student_template(version).render(question=question).strip()


def chat_prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """`messages` rendered with the model's chat template, ending in the assistant generation prompt.

    Rendered as text, then tokenized without special tokens: the chat template already wrote them, and
    a tokenizer that adds a BOS would otherwise add a second one.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
