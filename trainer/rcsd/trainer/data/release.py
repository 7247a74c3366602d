"""The released recipe's data (RubricHub science, RaR-Science) as free-form `Question`s.

The release (carriegu0818/RCSD, rcsd_train_reward.py = TRAIN) reads records of a question, a reference
answer and a rubric from Hugging Face datasets, RubricHub's Parquet files and `save_to_disk` folders.
Here the same records come from local files: JSONL, a JSON list, Parquet, or a `save_to_disk` folder
(Arrow files, read with pyarrow alone; the `datasets` package is not needed). Field names are the
release's, first present wins (data_collator_reward.py L90-96, TRAIN L133-161, L192-200):
question ← question, problem, prompt, instruction, input, query; reference ← reference_answer, reference,
answer, final_answer, solution; rubric ← rubric, rubric_list, rubrics (a list, or its JSON text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rcsd.client.prompts import chat_prompt_ids
from rcsd.trainer.data.questions import Question, RubricItem

QUESTION_KEYS = ("question", "problem", "prompt", "instruction", "input", "query")
REFERENCE_KEYS = ("reference_answer", "reference", "answer", "final_answer", "solution")
RUBRIC_KEYS = ("rubric", "rubric_list", "rubrics")
# TRAIN L35, L244: of RubricHub's sft_RuFT files the release keeps these two sources (its science set)
RUBRICHUB_SCIENCE_SOURCES = frozenset({"RaR_science.jsonl", "MegeScience.jsonl"})
# TRAIN L421-475: the prompt the release's length filter measures; note "are authoritative", not the
# training prompt's "are guidelines ... may not be perfect" (data_collator_reward.py L37-42)
FILTER_PROMPT = (
    "Question: {question}\n\nReference Answer:\n{reference}\n\nRubric (JSON array):\n{rubric}\n\n\n"
    "The reference answer and rubric above are authoritative. Briefly explain the key requirements, "
    "constraints, and reasoning expectations implied by them. Do NOT solve the question yet. "
    "Do NOT use <think> tags.\n"
)
MAX_PROMPT_TOKENS = 2048  # TRAIN L1031-1034: `max_reward_prompt_tokens`, kept iff <= 2048
_CATEGORY = re.compile(r"^(Essential|Important|Optional|Pitfall) Criteria:\s*")


def is_release_file(path: Path) -> bool:
    """A file or folder in one of the release's formats, not rcsd's own question JSONL (whose records
    have an `answer_type`; a JSONL record with neither is rcsd's, and fails as such)."""
    if path.is_dir() or path.suffix in (".parquet", ".json"):
        return True
    first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "{}")
    record = json.loads(first)
    return "answer_type" not in record and any(k in record for k in QUESTION_KEYS)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL / JSON list / Parquet file or a `datasets` `save_to_disk` folder."""
    if path.is_dir():
        import pyarrow as pa

        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        records: list[dict[str, Any]] = []
        for entry in state["_data_files"]:  # Arrow IPC streams, in order
            with pa.memory_map(str(path / entry["filename"])) as source:
                records += pa.ipc.open_stream(source).read_all().to_pylist()
        return records
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "", [])), None)


def _items(value: Any) -> Iterator[RubricItem]:
    """Rubric items as the release normalises them (TRAIN L133-150): description ← description,
    criterion, criteria; weight ← weight, points, score (default 1); title ← "Criterion {n}". A bare
    string (RaR-Science's `rubric_list`) keeps its category prefix as the category; an item without a
    description is skipped."""
    items = json.loads(value) if isinstance(value, str) else value
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            match = _CATEGORY.match(item)
            category = match.group(1) if match else "Important"
            yield RubricItem(description=item[match.end() :] if match else item, category=category)
            continue
        description = _first(item, ("description", "criterion", "criteria"))
        if description is None:  # nothing to check
            continue
        weight = _first(item, ("weight", "points", "score"))
        yield RubricItem(
            title=str(item.get("title") or f"Criterion {number}"),
            description=str(description),
            weight=float(weight) if weight is not None else 1.0,
        )


def release_questions(path: Path) -> list[Question]:
    """The file's records as free-form questions, dropping as the release does: a RubricHub row outside
    its science sources (TRAIN L244), and a record without a reference answer or a rubric (L244,
    L1254-1273). Ids are the record's `id`, else `<file stem>-<row>`. A file with no usable record is
    a ValueError (a wrong path or format, not an empty data set)."""
    questions = []
    for row, record in enumerate(read_records(path)):
        if "query" in record and record.get("source") not in RUBRICHUB_SCIENCE_SOURCES:
            continue
        question, reference = _first(record, QUESTION_KEYS), _first(record, REFERENCE_KEYS)
        rubric = _first(record, RUBRIC_KEYS)
        items = list(_items(rubric)) if rubric is not None else []
        if question is None or reference is None or not str(reference).strip() or not items:
            continue
        questions.append(
            Question(
                id=str(record.get("id") or f"{path.stem}-{row}"),
                source=str(record.get("question_source") or record.get("source") or path.stem),
                subject=str(record.get("data_source") or "science"),
                answer_type="free_form",
                question=str(question),
                answer=str(reference),
                reference_solution=str(reference),
                rubric=items,
            )
        )
    if not questions:
        raise ValueError(f"{path}: no record with a question, a reference answer and a rubric")
    return questions


def filter_prompt_ids(tokenizer: Any, question: Question, enable_thinking: bool | None = None) -> list[int]:
    """The ids the release's length filter counts (TRAIN L478-520): its own privileged prompt, with the
    question's rubric as a JSON array, chat-templated (`enable_thinking` = teacher_thinking). A question
    without a rubric of its own (the rubric service writes one in training) is counted with `[]`."""
    rubric = json.dumps(
        [item.model_dump(exclude_none=True, exclude_defaults=True) for item in question.rubric or []],
        ensure_ascii=False,
    )
    text = FILTER_PROMPT.format(
        question=question.question, reference=question.reference_answer, rubric=rubric
    )
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": text}], enable_thinking)


def within_prompt_budget(
    questions: list[Question],
    tokenizer: Any,
    max_tokens: int = MAX_PROMPT_TOKENS,
    enable_thinking: bool | None = None,
) -> list[Question]:
    """The questions whose filter prompt has at most `max_tokens` tokens, in order (the release's filter)."""
    return [q for q in questions if len(filter_prompt_ids(tokenizer, q, enable_thinking)) <= max_tokens]
