"""The release's rubric ablations (`teacher.rubric_source`): what rubric the teacher is shown.

- `generic` is the release's `GENERIC_RUBRIC` (carriegu0818/RCSD @ 521b538 opsd_train_reward.py,
  written out below from its text), shown to every question, in the prompt as the release's
  `GENERIC_RUBRIC_TEXT = json.dumps(GENERIC_RUBRIC, ensure_ascii=False)`;
- `ground_truth` is the data set's rubric, as the release's `_use_ground_truth_rubric` puts a RubricHub
  record's normalised `rubric_list` in the prompt (title else "Criterion {n}", weight else points);
- `random`, `noisy`, `reduced` (the release trains on caches it does not say how it built; rcsd's
  definitions are in `rcsd.trainer.ablations`): another question's generated rubric by a seeded
  derangement; half the criteria swapped for the partner's; half the criteria kept, in order;
- end to end on the tiny model, real services and the real trainer: the rubric in every teacher
  request is the ablated one.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from pathlib import Path

import pytest

from rcsd.client import Criterion, RubricRequest
from rcsd.client.prompts.teacher_context import rubric_json
from rcsd.trainer import ablations
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.service_calls import ServiceCalls
from rcsd.trainer.tasks import AnsweringQuestions
from rcsd.trainer.train import main
from tests.trainer.configs import answer_config

DATA = "learnability_train"
# opsd_train_reward.py @ 521b538, GENERIC_RUBRIC (also rcsd_train_reward.py @ f2035f8 L371-410)
RELEASE_GENERIC = [
    {"title": "Understand Problem",
     "description": "Understand the problem: Identify what is being asked and restate the goal clearly.",
     "weight": 1},
    {"title": "Identify Information",
     "description": "Identify relevant information: Extract the important facts, quantities, constraints, "
     "definitions, and assumptions from the problem.",
     "weight": 1},
    {"title": "Choose Strategy",
     "description": "Choose an appropriate solution strategy: Select a valid method, principle, formula, "
     "or reasoning approach for solving the problem.",
     "weight": 1},
    {"title": "Execute Reasoning",
     "description": "Execute the reasoning carefully: Carry out the solution step by step, ensuring that "
     "each step follows logically from the previous one.",
     "weight": 1},
    {"title": "Check Correctness",
     "description": "Check correctness and consistency: Verify calculations, units, assumptions, edge "
     "cases, and whether the answer satisfies the original question.",
     "weight": 1},
    {"title": "Provide Final Answer",
     "description": "Provide the final answer clearly: State the final answer in a concise and unambiguous "
     "form.",
     "weight": 1},
]  # fmt: skip


def _criteria(*titles: str) -> list[Criterion]:
    return [Criterion(title=t, description=f"check {t}", weight=5) for t in titles]


def _key(question_text: str) -> str:
    return hashlib.sha256(question_text.encode()).hexdigest()[:12]


class _RecordingRubrics:
    """Stands in for the rubric client: records each request, answers a five-criterion rubric whose
    titles name the question (`<key of its text> #<n>`)."""

    def __init__(self) -> None:
        self.requests: list[RubricRequest] = []
        self._lock = threading.Lock()

    def generate(self, request: RubricRequest) -> object:
        with self._lock:
            self.requests.append(request)
        titles = (f"{_key(request.question)} #{n}" for n in range(5))
        return type("Response", (), {"criteria": _criteria(*titles)})()

    def close(self) -> None:
        pass


def _shown(rubric_source: str, seed: int = 0) -> tuple[list[str], list[list[Criterion] | None]]:
    """The training questions' keys, and the rubric the task shows the teacher for each."""
    config = TrainConfig(data=[DATA], data_limit=8, seed=seed, teacher={"rubric_source": rubric_source})
    calls = ServiceCalls(config)
    calls.rubrics = _RecordingRubrics()  # type: ignore[assignment]
    try:
        task = AnsweringQuestions(config, calls)
        rubrics = [f.result().criteria for f in task.fetch_rubrics(task.questions)]
    finally:
        calls.close()
    return [_key(q.prompt_text) for q in task.questions], rubrics


def _owner(criterion: Criterion) -> str:
    return criterion.title.rsplit(" #", 1)[0]


# --- generic and ground_truth: as the release has them -----------------------------------------


def test_generic_is_the_released_rubric_for_every_question():
    assert [c.model_dump() for c in ablations.generic_rubric()] == RELEASE_GENERIC
    assert rubric_json(list(ablations.generic_rubric())) == json.dumps(RELEASE_GENERIC, ensure_ascii=False)
    texts, shown = _shown("generic")
    assert len(shown) == len(texts) == 8
    assert all([c.model_dump() for c in rubric] == RELEASE_GENERIC for rubric in shown if rubric)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_ground_truth_is_the_data_sets_rubric_as_the_release_puts_it(tmp_path):
    rubrichub = [
        {"source": "RaR_science.jsonl", "query": "Define entropy.", "answer": "S = k ln W",
         "rubrics": [{"criterion": "Gives S = k ln W.", "points": 7},
                     {"title": "Units", "description": "States J/K.", "weight": 3}]},
        {"source": "MegeScience.jsonl", "query": "What is a mole?", "answer": "6.022e23 entities",
         "rubrics": [{"description": "Gives Avogadro's number.", "score": 5}]},
    ]  # fmt: skip
    # the release's _normalize_rubrichub_rubrics then _use_ground_truth_rubric: json.dumps of these
    release = [
        [{"title": "Criterion 1", "description": "Gives S = k ln W.", "weight": 7},
         {"title": "Units", "description": "States J/K.", "weight": 3}],
        [{"title": "Criterion 1", "description": "Gives Avogadro's number.", "weight": 5}],
    ]  # fmt: skip
    data = _write(tmp_path / "hub.jsonl", rubrichub)
    config = TrainConfig(data=[str(data)], teacher={"rubric_source": "ground_truth"})
    calls = ServiceCalls(config)
    try:
        task = AnsweringQuestions(config, calls)
        shown = [f.result().criteria for f in task.fetch_rubrics(task.questions)]
    finally:
        calls.close()
    assert [rubric_json(r) for r in shown] == [json.dumps(r, ensure_ascii=False) for r in release]


def test_ground_truth_of_category_only_items_takes_the_categorys_weight(tmp_path):
    """RaR-Science's `rubric_list` strings carry a category, no weight: the judge's mid-range weight,
    rounded into the teacher's -1..10 (the release shows the strings themselves)."""
    items = [
        "Essential Criteria: A.",
        "Important Criteria: B.",
        "Optional Criteria: C.",
        "Pitfall Criteria: D.",
    ]
    data = _write(tmp_path / "rar.jsonl", [{"question": "Q?", "reference_answer": "R", "rubric_list": items}])
    [question] = load_questions([data])
    assert [(c.title, c.description, c.weight) for c in ablations.ground_truth_rubric(question)] == [
        ("Criterion 1", "A.", 5),
        ("Criterion 2", "B.", 4),
        ("Criterion 3", "C.", 2),
        ("Criterion 4", "D.", -1),
    ]


def test_ground_truth_stops_at_start_on_a_question_without_a_rubric():
    config = TrainConfig(data=[DATA], teacher={"rubric_source": "ground_truth"})
    calls = ServiceCalls(config)
    try:
        with pytest.raises(ValueError, match="ground_truth needs a rubric in the data"):
            AnsweringQuestions(config, calls)
    finally:
        calls.close()


# --- random, noisy, reduced: rcsd's definitions ------------------------------------------------


def test_derangement_moves_every_index_and_depends_on_the_seed_only():
    for count in (2, 3, 8):
        for seed in range(20):
            order = ablations.derangement(count, random.Random(seed))
            assert sorted(order) == list(range(count))
            assert all(i != j for i, j in enumerate(order))
    draws = {tuple(ablations.derangement(8, random.Random(seed))) for seed in range(20)}
    assert len(draws) > 10  # not one fixed permutation
    assert ablations.derangement(8, random.Random(3)) == ablations.derangement(8, random.Random(3))


def test_random_shows_another_questions_rubric_each_used_once():
    texts, shown = _shown("random")
    owners = [{_owner(c) for c in rubric} for rubric in shown if rubric]
    assert all(len(o) == 1 for o in owners) and len(owners) == 8
    partners = [o.pop() for o in owners]
    assert all(partner != own for partner, own in zip(partners, texts, strict=True))
    assert sorted(partners) == sorted(texts)
    assert _shown("random")[1] == shown  # the same seed, the same draw
    assert _shown("random", seed=1)[1] != shown


def test_reduced_keeps_half_rounded_up_in_order():
    rng = random.Random(0)
    criteria = _criteria("a", "b", "c", "d", "e")
    for _ in range(20):
        kept = ablations.reduced(criteria, rng)
        assert len(kept) == 3 and kept == [c for c in criteria if c in kept]
    assert ablations.reduced(_criteria("a"), rng) == _criteria("a")
    assert len(ablations.reduced(_criteria(*"abcdef"), rng)) == 3
    texts, shown = _shown("reduced")
    for text, rubric in zip(texts, shown, strict=True):
        assert rubric is not None and len(rubric) == 3 and {_owner(c) for c in rubric} == {text}


def test_noisy_replaces_half_rounded_down_in_place_with_the_partners():
    rng = random.Random(0)
    own, other = _criteria("a", "b", "c", "d", "e"), _criteria("x", "y", "z")
    for _ in range(20):
        mixed = ablations.noisy(own, other, rng)
        kept = [(i, c) for i, c in enumerate(mixed) if c in own]
        assert len(mixed) == 5 and len(kept) == 3 and all(own[i] == c for i, c in kept)
        assert sum(c in other for c in mixed) == 2
    assert ablations.noisy(_criteria("a"), other, rng)[0] in other  # at least one
    assert len(ablations.noisy(own, _criteria("x"), rng)) == 5  # no more than the partner has
    texts, shown = _shown("noisy")
    _, partners_shown = _shown("random")  # the same derangement draws the partners
    for text, rubric, partner in zip(texts, shown, partners_shown, strict=True):
        assert rubric is not None and partner is not None
        assert [_owner(c) for c in rubric].count(text) == 3
        assert {_owner(c) for c in rubric} - {text} == {_owner(partner[0])}


def test_a_refused_rubric_leaves_the_question_to_the_reference():
    from concurrent.futures import Future

    from rcsd.trainer.service_calls import Rubric
    from rcsd.trainer.tasks import _after

    refused: Future[Rubric] = Future()
    arrived: Future[Rubric] = Future()
    built = _after([refused, arrived], lambda parts: parts[0])
    refused.set_result(Rubric(None, 0.1))
    assert not built.done()
    arrived.set_result(Rubric(_criteria("a"), 0.2))
    assert built.result() == Rubric(None, 0.2)


@pytest.mark.parametrize("source", ["random", "generic", "noisy", "reduced", "ground_truth"])
def test_an_ablation_needs_a_teacher_that_sees_a_rubric(source):
    with pytest.raises(ValueError, match=f"rubric_source {source} needs"):
        TrainConfig(method="opsd", teacher={"context_mode": "reference", "rubric_source": source})


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["generic", "noisy"])
def test_the_teacher_is_shown_the_ablated_rubric(
    source, tiny_model_dir, trainer_services, questions_file, tmp_path, monkeypatch
):
    """The real trainer against the real services: every teacher request carries the ablation."""
    sent = []
    score = ServiceCalls._score

    def spy(self, request):
        sent.append(request)
        return score(self, request)

    monkeypatch.setattr(ServiceCalls, "_score", spy)
    config = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        tmp_path / "run",
        teacher={"top_k": 8, "rubric_source": source},
        rubric={"min_criteria": 2, "max_criteria": 3, "max_tokens": 300, "on_failure": "reference"},
    )
    main(config)
    assert len(sent) == 4  # 2 steps x 2 questions
    shown = [r for r in sent if r.context_mode == "rubric+reference"]
    if source == "generic":
        assert len(shown) == 4 and all([c.model_dump() for c in r.rubric] == RELEASE_GENERIC for r in shown)
        return
    # noisy: each question's own generated rubric (the service stores it: the same request, the same
    # rubric) mixed with its derangement partner's, by the question's own draw
    assert shown
    questions = load_questions(config.data)
    by_text = {q.prompt_text: q for q in questions}
    partners = ablations.partners(questions, "noisy", config.seed)
    calls = ServiceCalls(config)
    try:
        for request in shown:
            question = by_text[request.question]
            own, theirs = [
                f.result().criteria for f in calls.fetch_rubrics([question, partners[question.id]])
            ]
            assert own is not None and theirs is not None
            rng = ablations.question_rng("noisy", config.seed, question.id)
            assert request.rubric == ablations.noisy(own, theirs, rng)
            assert sum(c not in own for c in request.rubric) >= 1 or any(c in own for c in theirs)
    finally:
        calls.close()
