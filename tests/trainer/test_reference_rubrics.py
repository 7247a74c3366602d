"""Reference rubrics for Stage I: every rubric passes the project's own checks and fits the generation grammar.

The file and how it was made are described in `rcsd/trainer/data/REFERENCE_RUBRICS.md`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rcsd.client.protocol import Criterion, RubricBounds
from rcsd.client.protocol.rubric import rubric_problems
from rcsd.client.protocol.rubric_format import PITFALL_WEIGHT, generation_schema, to_criteria
from rcsd.trainer.data.questions import Question, shipped_sets

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "science"
RUBRICS = resources.files("rcsd.trainer") / "data" / "rubrics" / "reference_rubrics.jsonl"
BOUNDS = RubricBounds(min_criteria=5, max_criteria=12)
SUBJECTS = {"physics", "chemistry", "biology"}
# Held-out rubrics per (source, subject): the first ones of each group by sha256(id).
HELDOUT = {
    ("scibench", "physics"): 2,
    ("mmlu", "physics"): 1,
    ("scibench", "chemistry"): 2,
    ("mmlu", "chemistry"): 1,
    ("mmlu", "biology"): 4,
}
SCIBENCH_PER_SUBJECT = 10
MMLU_PER_SUBJECT = {"physics": 6, "chemistry": 6, "biology": 16}
MMLU_HELDOUT_SLICE = 32  # the first 32 by sha256(id) are the shipped evaluation slice
# MMLU items passed over (in sha256 order, after the evaluation slice) while choosing: recall of one fact
# or definition, or a keyed answer that is wrong or disputable (see REFERENCE_RUBRICS.md).
MMLU_PASSED_OVER = {
    "physics": [
        "conceptual_physics-0011", "conceptual_physics-0057", "conceptual_physics-0199",
        "conceptual_physics-0148", "conceptual_physics-0175", "high_school_physics-0030",
        "conceptual_physics-0140", "conceptual_physics-0220",
    ],
    "chemistry": [
        "high_school_chemistry-0182", "high_school_chemistry-0150", "high_school_chemistry-0114",
        "high_school_chemistry-0163",
    ],
    "biology": [
        "high_school_biology-0302", "high_school_biology-0057", "high_school_biology-0159",
        "high_school_biology-0308", "college_biology-0030", "high_school_biology-0133",
        "high_school_biology-0219", "college_biology-0075", "high_school_biology-0051",
        "high_school_biology-0177", "high_school_biology-0238", "college_biology-0123",
        "high_school_biology-0002",
    ],
}  # fmt: skip


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rubrics() -> list[dict[str, Any]]:
    return _jsonl(RUBRICS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped() -> dict[str, dict[str, Any]]:
    """Every shipped question record by id, and the name of the slice it ships in."""
    records = {}
    for name, path in shipped_sets().items():
        for record in _jsonl(path.read_text(encoding="utf-8")):
            records[record["id"]] = {"slice": name, "record": record}
    return records


def test_counts_splits_and_ids(rubrics):
    assert len(rubrics) >= 40
    ids = [r["id"] for r in rubrics]
    assert len(set(ids)) == len(ids), "ids must be unique"
    for r in rubrics:
        assert set(r) == {"id", "split", "question", "criteria"}
        assert r["split"] in {"train", "heldout"}
        assert r["question"]["id"] == r["id"]
        assert r["question"]["source"] in {"scibench", "mmlu"}
        assert not r["id"].lower().startswith("gpqa")
        Question.model_validate(r["question"])  # loads like any shipped question
    assert Counter(r["split"] for r in rubrics)["heldout"] == 10
    for split in ("train", "heldout"):
        assert {r["question"]["subject"] for r in rubrics if r["split"] == split} == SUBJECTS


def test_every_rubric_passes_the_rubric_checks(rubrics):
    for r in rubrics:
        criteria = [Criterion.model_validate(c) for c in r["criteria"]]
        assert rubric_problems(criteria, BOUNDS) == [], r["id"]
        assert all(c.weight == PITFALL_WEIGHT or 1 <= c.weight <= 10 for c in criteria), r["id"]


def test_every_rubric_is_writable_in_the_generation_format(rubrics):
    """Titles and descriptions match the grammar's word patterns (taken from the generation schema itself,
    not copied); each rubric is one the constrained generator could emit, in the order it would come out."""
    schema = generation_schema(BOUNDS)
    for part in ("criteria", "pitfalls"):
        item = schema["properties"][part]["items"]["properties"]
        for r in rubrics:
            for c in r["criteria"]:
                for field in ("title", "description"):
                    assert re.fullmatch(item[field]["pattern"], c[field]), (r["id"], c[field])
    for r in rubrics:
        generated = {
            "criteria": [c for c in r["criteria"] if c["weight"] != PITFALL_WEIGHT],
            "pitfalls": [
                {"title": c["title"], "description": c["description"]}
                for c in r["criteria"]
                if c["weight"] == PITFALL_WEIGHT
            ],
        }
        jsonschema.validate(generated, schema)
        # Weighted criteria first, pitfalls last: the order `to_criteria` gives the generator's output.
        flat = [c.model_dump() for c in to_criteria(generated)]
        assert flat == r["criteria"], r["id"]


def test_the_documented_selection_and_split(rubrics, shipped):
    by_id = {r["id"]: r for r in rubrics}
    train_slice = [v["record"] for v in shipped.values() if v["slice"] == "scibench_train"]
    for subject in ("physics", "chemistry"):
        ranked = sorted(
            (q for q in train_slice if q["subject"] == subject),
            key=lambda q: (q["reference_solution"] is None, _sha(q["id"])),
        )
        expected = {q["id"] for q in ranked[:SCIBENCH_PER_SUBJECT]}
        chosen = {i for i, r in by_id.items() if r["question"]["source"] == "scibench"}
        assert {i for i in chosen if by_id[i]["question"]["subject"] == subject} == expected
    for r in rubrics:
        if r["question"]["source"] == "mmlu":  # never an evaluation item
            assert r["id"] not in shipped, f"{r['id']} is in the held-out slice {shipped[r['id']]['slice']}"
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rubrics:
        groups.setdefault((r["question"]["source"], r["question"]["subject"]), []).append(r["id"])
    assert set(groups) == set(HELDOUT)
    for key, ids in groups.items():
        ordered = sorted(ids, key=_sha)
        assert [by_id[i]["split"] for i in ordered] == ["heldout"] * HELDOUT[key] + ["train"] * (
            len(ordered) - HELDOUT[key]
        ), key
    assert "reference_rubrics" not in shipped_sets(), "the rubrics must not pass for a question slice"


def test_question_records_are_the_shipped_ones(rubrics, shipped):
    for r in rubrics:
        if r["id"] in shipped:
            assert r["question"] == shipped[r["id"]]["record"], r["id"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/science is not beside the repository")
def test_question_records_are_the_sources_and_hold_no_gpqa(rubrics):
    files = {"scibench": "scibench_{}.jsonl", "mmlu": "mmlu_{}.jsonl"}
    sources: dict[str, dict[str, Any]] = {}
    for r in rubrics:
        name = files[r["question"]["source"]].format(r["question"]["subject"])
        if name not in sources:
            sources[name] = {q["id"]: q for q in _jsonl((SHARED / name).read_text(encoding="utf-8"))}
        assert r["question"] == sources[name][r["id"]], r["id"]
    chosen = {r["id"] for r in rubrics}
    for subject, count in MMLU_PER_SUBJECT.items():
        ranked = sorted(sources[f"mmlu_{subject}.jsonl"], key=_sha)[MMLU_HELDOUT_SLICE:]
        passed_over = {f"mmlu-{i}" for i in MMLU_PASSED_OVER[subject]}
        walk = [i for i in ranked[: count + len(passed_over)] if i not in passed_over]
        assert walk == [i for i in ranked if i in chosen], subject
    text = RUBRICS.read_text(encoding="utf-8")
    for gpqa in _jsonl((SHARED / "gpqa_diamond.jsonl").read_text(encoding="utf-8")):
        assert gpqa["id"] not in text
        assert gpqa["question"][:80] not in text
