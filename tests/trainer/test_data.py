"""Questions: the shipped slices (deterministic, disjoint, no GPQA), the model, the loader's errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rcsd.trainer.data.questions import Question, load_questions, shipped_sets

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "science"
SLICES = {
    "scibench_train": 64,
    "scibench_heldout": 32,
    "mmlu_physics_heldout": 32,
    "mmlu_chemistry_heldout": 32,
    "mmlu_biology_heldout": 32,
    "learnability_train": 24,
    "learnability_heldout": 24,
}
MMLU = ("biology", "chemistry", "physics")


def test_shipped_slices_load_and_are_disjoint():
    assert set(shipped_sets()) == set(SLICES)
    ids: dict[str, set[str]] = {}
    for name, count in SLICES.items():
        questions = load_questions([name])
        assert len(questions) == count
        assert {q.source for q in questions} == {"scibench" if name.startswith("scibench") else "mmlu"}
        ids[name] = {q.id for q in questions}
    assert not ids["scibench_train"] & ids["scibench_heldout"]
    assert not ids["learnability_train"] & ids["learnability_heldout"]
    assert len(load_questions([n for n in SLICES if not n.startswith("learnability")])) == 192


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/science is not beside the repository")
def test_slices_are_the_documented_selection_and_hold_no_gpqa():
    def by_hash(*files: str) -> list[str]:
        lines = [line for f in files for line in (SHARED / f).read_text().splitlines() if line.strip()]
        return sorted(lines, key=lambda line: hashlib.sha256(json.loads(line)["id"].encode()).hexdigest())

    scibench = by_hash("scibench_physics.jsonl", "scibench_chemistry.jsonl")
    expected = {"scibench_train": scibench[:64], "scibench_heldout": scibench[64:96]}
    for subject in ("physics", "chemistry", "biology"):
        expected[f"mmlu_{subject}_heldout"] = by_hash(f"mmlu_{subject}.jsonl")[:32]
    # the learnability experiment's sets: 8 of each MMLU slice to train on, the next 8 held out
    expected["learnability_train"] = [q for s in MMLU for q in expected[f"mmlu_{s}_heldout"][:8]]
    expected["learnability_heldout"] = [q for s in MMLU for q in expected[f"mmlu_{s}_heldout"][8:16]]
    shipped_text = ""
    for name, path in shipped_sets().items():
        assert path.read_text().splitlines() == expected[name]
        shipped_text += path.read_text()
    for line in (SHARED / "gpqa_diamond.jsonl").read_text().splitlines():
        assert json.loads(line)["question"][:80] not in shipped_text


def test_mcq_prompt_and_reference():
    q = Question(
        id="q", source="test", subject="chemistry", answer_type="mcq", question="Which gas?",
        choices=["Oxygen", "Carbon dioxide"], answer="B",
    )  # fmt: skip
    assert q.prompt_text == "Which gas?\n\n(A) Oxygen\n(B) Carbon dioxide"
    assert q.reference_answer == "The answer is (B) Carbon dioxide"
    with pytest.raises(ValueError, match="not one of the 2 choice letters"):
        Question(**{**q.model_dump(), "answer": "C"})


def test_numeric_prompt_and_reference():
    q = Question(
        id="n", source="test", subject="physics", answer_type="numeric", question="How far?",
        answer="19.6", unit="$\\mathrm{~m}$",
    )  # fmt: skip
    assert q.prompt_text == "How far?\n\nGive the answer in $\\mathrm{~m}$."
    assert q.reference_answer == "The answer is 19.6 $\\mathrm{~m}$"
    assert Question(**{**q.model_dump(), "unit": ""}).prompt_text == "How far?"
    worked = Question(**{**q.model_dump(), "reference_solution": "d = g t^2 / 2 = 19.6 m"})
    assert worked.reference_answer == "d = g t^2 / 2 = 19.6 m"


def test_loader_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="scibench_train"):
        load_questions([tmp_path / "missing.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_questions([bad])
    with pytest.raises(ValueError, match="appears twice"):
        load_questions(["scibench_train", "scibench_train"])
