"""The learnability control, `teacher.rubric_source: shifted`: the teacher is shown another question's rubric.

- each training question's rubric request (as it goes on the wire) is for the next training question,
  cyclically: every rubric is used exactly once and no question ever gets its own;
- `generated` (the default) asks for each question's own rubric;
- the option is refused where the teacher sees no rubric (OPSD's reference-only context, GRPO);
- a config written with the field's old name, `rubric_of: own | shifted`, still loads.
"""

from __future__ import annotations

import threading

import pytest

from rcsd.client import Criterion, RubricRequest
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.service_calls import ServiceCalls
from rcsd.trainer.tasks import AnsweringQuestions

DATA = "learnability_train"


class _RecordingRubrics:
    """Stands in for the rubric client: records each request and answers a one-criterion rubric."""

    def __init__(self) -> None:
        self.requests: list[RubricRequest] = []
        self._lock = threading.Lock()

    def generate(self, request: RubricRequest) -> object:
        with self._lock:
            self.requests.append(request)
        criterion = Criterion(title="t", description=f"about {request.question[:20]}", weight=5)
        return type("Response", (), {"criteria": [criterion]})()

    def close(self) -> None:
        pass


def _requested(rubric_source: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The training questions' texts, and (question, reference) of the rubric requested for each."""
    config = TrainConfig(data=[DATA], data_limit=16, teacher={"rubric_source": rubric_source})
    calls = ServiceCalls(config)
    recorder = _RecordingRubrics()
    calls.rubrics = recorder  # type: ignore[assignment]
    try:
        task = AnsweringQuestions(config, calls)
        for question in task.questions:  # one at a time: the order of the requests is the questions'
            [future] = task.fetch_rubrics([question])
            future.result()
    finally:
        calls.close()
    return [q.prompt_text for q in task.questions], [
        (r.question, r.reference_answer) for r in recorder.requests
    ]


def test_shifted_shows_each_question_the_next_questions_rubric():
    questions = load_questions([DATA])[:16]
    texts, requested = _requested("shifted")
    assert len(requested) == 16
    expected = [(q.prompt_text, q.reference_answer) for q in questions[1:] + questions[:1]]
    assert requested == expected
    assert all(asked != own for (asked, _), own in zip(requested, texts, strict=True))
    assert sorted(requested) == sorted((q.prompt_text, q.reference_answer) for q in questions)


def test_generated_asks_for_each_questions_own_rubric():
    texts, requested = _requested("generated")
    assert [question for question, _ in requested] == texts


@pytest.mark.parametrize("changes", [{"method": "opsd", "teacher": {"context_mode": "reference"}}])
def test_shifted_needs_a_teacher_that_sees_a_rubric(changes):
    teacher = {**changes.get("teacher", {}), "rubric_source": "shifted"}
    with pytest.raises(ValueError, match="rubric_source shifted needs"):
        TrainConfig(data=[DATA], **{**changes, "teacher": teacher})
    with pytest.raises(ValueError, match="rubric_source shifted needs"):
        TrainConfig(data=[DATA], method="grpo", rollouts_per_prompt=2, teacher={"rubric_source": "shifted"})


def test_the_old_name_rubric_of_still_loads():
    assert TrainConfig(teacher={"rubric_of": "shifted"}).teacher.rubric_source == "shifted"
    assert TrainConfig(teacher={"rubric_of": "own"}).teacher.rubric_source == "generated"
    with pytest.raises(ValueError, match="old name"):
        TrainConfig(teacher={"rubric_of": "shifted", "rubric_source": "random"})
