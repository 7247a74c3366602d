"""Questions with reference answers, in the JSONL format of `../shared/data/science/` (see its README).

Small MIT-licensed slices (SciBench, MMLU) ship in `rcsd/trainer/data/`; `load_questions` takes file
paths or the names of those slices ("scibench_train", "mmlu_physics_heldout", ...). GPQA is never shipped:
read it from `../shared/data/science/gpqa_diamond.jsonl` at run time. The released recipe's data
(RubricHub, RaR-Science: JSONL, JSON, Parquet, `save_to_disk` folders) loads too (`rcsd.trainer.data.release`).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rcsd.client.protocol import Criterion

LETTERS = string.ascii_uppercase


class RubricItem(BaseModel):
    """One criterion of a free-form question's rubric, in RaR-Science's format: a signed integer weight
    (Essential 5, Important 3-4, Optional 1-2, Pitfall -1 to -2), or only a category (RubricHub style)."""

    model_config = ConfigDict(frozen=True)

    title: str = ""
    description: str
    weight: float | None = None
    category: Literal["Essential", "Important", "Optional", "Pitfall"] | None = None

    @model_validator(mode="after")
    def _weighted(self) -> RubricItem:
        if self.weight is None and self.category is None:
            raise ValueError("a rubric item needs a weight or a category")
        return self


class Question(BaseModel):
    """One question. `answer` is a number as text (numeric), the correct letter (mcq), or a reference
    answer (free_form: graded by a judge against `rubric`, `rcsd.trainer.judge`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    subject: str
    answer_type: Literal["numeric", "mcq", "free_form"]
    question: str
    choices: list[str] | None = None
    answer: str
    unit: str | None = None
    reference_solution: str | None = None
    rubric: list[RubricItem] | None = None  # free_form: what a judge checks

    @model_validator(mode="after")
    def _choices_fit_the_type(self) -> Question:
        if self.answer_type == "free_form" and not self.rubric:
            raise ValueError("a free-form question needs a rubric")
        if self.answer_type == "mcq":
            if not self.choices or len(self.choices) > len(LETTERS):
                raise ValueError("a multiple-choice question needs between 1 and 26 choices")
            if self.answer not in LETTERS[: len(self.choices)]:
                raise ValueError(
                    f"answer {self.answer!r} is not one of the {len(self.choices)} choice letters"
                )
        elif self.choices:
            raise ValueError(f"a {self.answer_type} question has no choices")
        return self

    @property
    def prompt_text(self) -> str:
        """What the student sees: the question, then the lettered choices or the unit to answer in."""
        if self.answer_type == "mcq":
            assert self.choices is not None
            lines = [f"({letter}) {choice}" for letter, choice in zip(LETTERS, self.choices, strict=False)]
            return self.question + "\n\n" + "\n".join(lines)
        if self.unit and self.unit.strip("$ "):
            return f"{self.question}\n\nGive the answer in {self.unit.strip()}."
        return self.question

    @property
    def reference_answer(self) -> str:
        """The reference the teacher sees: the worked solution if there is one, else the final answer."""
        if self.reference_solution:
            return self.reference_solution
        if self.answer_type == "mcq":
            assert self.choices is not None
            return f"The answer is ({self.answer}) {self.choices[LETTERS.index(self.answer)]}"
        return f"The answer is {self.answer} {(self.unit or '').strip()}".strip()


def shipped_sets() -> dict[str, Path]:
    """The data slices that ship with the trainer, by name (file stem)."""
    folder = resources.files(__package__)
    return {
        entry.name.removesuffix(".jsonl"): Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".jsonl")
    }


def resolve_data_path(path_or_name: str | Path) -> Path:
    """An existing file (or `save_to_disk` folder), else a shipped slice of that name; a FileNotFoundError
    naming both options."""
    path = Path(path_or_name)
    if path.exists():
        return path
    shipped = shipped_sets()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    raise FileNotFoundError(f"{path_or_name}: no such file, nor a shipped set ({', '.join(sorted(shipped))})")


def load_questions(paths: Sequence[str | Path]) -> list[Question]:
    """All questions of the JSONL files (or shipped slice names, or files in the release's formats), in
    order; ids must be unique."""
    from rcsd.trainer.data.release import is_release_file, release_questions  # it imports this module

    questions: list[Question] = []
    for spec in paths:
        path = resolve_data_path(spec)
        if is_release_file(path):
            questions += release_questions(path)
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                questions.append(Question.model_validate(json.loads(line)))
            except (json.JSONDecodeError, ValidationError) as exc:
                raise ValueError(f"{path}:{number}: not a question: {exc}") from exc
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise ValueError(f"question id {q.id!r} appears twice")
        seen.add(q.id)
    return questions


class ReferenceRubric(BaseModel):
    """A hand-written rubric for one question: Stage I's target (see `data/REFERENCE_RUBRICS.md`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    split: Literal["train", "heldout"]
    question: Question
    criteria: list[Criterion]


def reference_rubrics(
    split: Literal["train", "heldout"] | None = None, paths: Sequence[str | Path] = ()
) -> list[ReferenceRubric]:
    """Reference rubrics of one split (or all), in order: from JSONL files in the shipped format, or
    without `paths` the shipped ones (`data/rubrics/reference_rubrics.jsonl`)."""
    shipped = resources.files(__package__) / "rubrics" / "reference_rubrics.jsonl"
    texts = [Path(p).read_text(encoding="utf-8") for p in paths] or [shipped.read_text(encoding="utf-8")]
    rubrics = [
        ReferenceRubric.model_validate_json(line)
        for text in texts
        for line in text.splitlines()
        if line.strip()
    ]
    return [r for r in rubrics if split is None or r.split == split]
