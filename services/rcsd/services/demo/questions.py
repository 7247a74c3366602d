"""The demo's five shipped science questions (`questions.jsonl`, see QUESTIONS_LICENSE.md).

The file keeps the source records as they are; this module renders each into the two strings the
services take: the question text (an MMLU item gets its lettered choices) and a reference answer
(SciBench: the worked solution and the final value; MMLU: "The answer is (X) <choice>").
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from importlib import resources

QUESTIONS_RESOURCE = "questions.jsonl"


@dataclass(frozen=True)
class DemoQuestion:
    id: str
    source: str  # "scibench" or "mmlu"
    subject: str
    question: str
    reference_answer: str


def load_questions(limit: int | None = None) -> list[DemoQuestion]:
    """The shipped questions in file order, the first `limit` of them if given."""
    text = (resources.files("rcsd.services.demo") / QUESTIONS_RESOURCE).read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    questions = [_render(record) for record in records]
    return questions if limit is None else questions[:limit]


def _render(record: dict[str, object]) -> DemoQuestion:
    question = _clean(str(record["question"]))
    answer = str(record["answer"])
    if record["answer_type"] == "mcq":
        choices = [str(c) for c in record["choices"]]  # type: ignore[union-attr]
        letters = string.ascii_uppercase[: len(choices)]
        options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(letters, choices, strict=True))
        question = f"{question}\n\n{options}"
        reference = f"The answer is ({answer}) {choices[letters.index(answer)]}"
    else:
        unit = _clean(str(record.get("unit") or ""))
        final = f"{answer} {unit}".strip()
        solution = record.get("reference_solution")
        reference = (
            f"{_clean(str(solution))}\n\nFinal answer: {final}" if solution else f"Final answer: {final}"
        )
    return DemoQuestion(
        id=str(record["id"]),
        source=str(record["source"]),
        subject=str(record["subject"]),
        question=question,
        reference_answer=reference,
    )


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").strip()
