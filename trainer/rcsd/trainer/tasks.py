"""What the loop trains on: a task gives the items, the student's prompt for one, rubrics, teacher scores.

The loop (`rcsd.trainer.train`) is the same for both stages; only the task differs:
- `AnsweringQuestions` (Stage II, `stage: reasoner`): science questions answered with the student's own
  prompt, rubrics from the rubric service, the teacher's scores of the answers;
- `RubricWriting` (Stage I, `stage: rubric_generator`, `rcsd.trainer.rubric_writing`): the student writes
  rubrics, and the teacher sees the reference rubrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from rcsd.client.prompts.teacher_context import analysis_prompt_ids
from rcsd.client.protocol import Criterion
from rcsd.trainer import ablations
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import Question, load_questions
from rcsd.trainer.data.release import within_prompt_budget
from rcsd.trainer.probe import Probe, RecordedProbe
from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rubric_writing import RubricWriting
from rcsd.trainer.service_calls import Rubric, Scored, ServiceCalls
from rcsd.trainer.student import Student


class Task(Protocol):
    config: TrainConfig
    questions: list[Question]

    def prompt_ids(self, tokenizer: Any, question: Question) -> list[int]:
        """The student's prompt for `question`: what it samples after and what the teacher repeats."""
        ...

    def fetch_rubrics(self, questions: list[Question]) -> list[Future[Rubric]]:
        """One future per question (sent now), or an empty list when the method needs no rubric."""
        ...

    def score(
        self,
        question: Question,
        rubric: Rubric | None,
        completions: list[list[int]],
        analysis_ids: list[int] | None = None,
    ) -> Future[Scored]:
        """The teacher's scores of one group's completions, sent now (after `analysis_ids`: reason-first)."""
        ...

    def probe(self, student: Student, run_dir: Path) -> RecordedProbe | None:
        """The held-out measure taken before the first step and after the last, if any."""
        ...


class AnsweringQuestions:
    """Stage II: the student answers the training questions with its own prompt."""

    def __init__(self, config: TrainConfig, calls: ServiceCalls, tokenizer: Any = None) -> None:
        """`tokenizer` (the student's) counts the privileged prompts of `data_max_privileged_prompt_tokens`."""
        self.config, self.calls = config, calls
        self.questions = load_questions(config.data)[: config.data_limit]
        self.dropped_long = 0  # questions dropped by the release's privileged-prompt length filter
        if config.data_max_privileged_prompt_tokens is not None:
            budget, loaded = config.data_max_privileged_prompt_tokens, len(self.questions)
            self.questions = within_prompt_budget(self.questions, tokenizer, budget, config.teacher.thinking)
            self.dropped_long = loaded - len(self.questions)
        source = config.teacher.rubric_source
        self._partner = ablations.partners(self.questions, source, config.seed)  # whose rubric is fetched
        self._ground_truth = {  # converted now, so a question without a rubric stops the run at start
            q.id: ablations.ground_truth_rubric(q) for q in self.questions if source == "ground_truth"
        }

    def prompt_ids(self, tokenizer: Any, question: Question) -> list[int]:
        sampling = self.config.sampling
        return student_prompt_ids(
            tokenizer, question.prompt_text, sampling.prompt_version, sampling.enable_thinking
        )

    def analysis_prompt_ids(self, tokenizer: Any, question: Question, rubric: Rubric | None) -> list[int]:
        """`teacher.reason_first`: what the analysis of `question`'s privileged context is sampled after,
        the same ids the teacher's context starts with (`rcsd.client.prompts.teacher_context`)."""
        return analysis_prompt_ids(
            tokenizer,
            question=question.prompt_text,
            context_mode=self.calls.context_mode(rubric),
            reference_answer=question.reference_answer,
            rubric=rubric.criteria if rubric is not None else None,
            version=self.config.sampling.prompt_version,
            enable_thinking=self.config.teacher.analysis_thinking,
        )

    def fetch_rubrics(self, questions: list[Question]) -> list[Future[Rubric]]:
        """The rubrics the teacher is shown (`teacher.rubric_source`, `rcsd.trainer.ablations`): built
        from the generated rubrics of the question and its partner as they arrive, or known already."""
        source = self.config.teacher.rubric_source
        if source in ("generic", "ground_truth"):
            return [
                _done(list(ablations.generic_rubric()) if source == "generic" else self._ground_truth[q.id])
                for q in questions
            ]
        fetched = self.calls.fetch_rubrics([self._partner.get(q.id, q) for q in questions])
        if source == "reduced":
            return [_after([f], partial(self._ablated, q)) for q, f in zip(questions, fetched, strict=True)]
        if source == "noisy":  # the question's own generated rubric, with some of its partner's criteria
            own = self.calls.fetch_rubrics(questions)
            return [
                _after([mine, theirs], partial(self._ablated, q))
                for q, mine, theirs in zip(questions, own, fetched, strict=True)
            ]
        return fetched  # generated, shifted, random: a generated rubric as it is

    def _ablated(self, question: Question, parts: list[list[Criterion]]) -> list[Criterion]:
        """`reduced` of the question's generated rubric, or `noisy` of it and its partner's."""
        source = self.config.teacher.rubric_source
        rng = ablations.question_rng(source, self.config.seed, question.id)
        if source == "reduced":
            return ablations.reduced(parts[0], rng)
        return ablations.noisy(parts[0], parts[1], rng)

    def score(
        self,
        question: Question,
        rubric: Rubric | None,
        completions: list[list[int]],
        analysis_ids: list[int] | None = None,
    ) -> Future[Scored]:
        return self.calls.score(question, rubric, completions, analysis_ids)

    def probe(self, student: Student, run_dir: Path) -> RecordedProbe | None:
        return Probe(self.config, student, self.calls, run_dir) if self.config.probe.data else None


def _done(criteria: list[Criterion]) -> Future[Rubric]:
    future: Future[Rubric] = Future()
    future.set_result(Rubric(criteria, latency_s=0.0))
    return future


def _after(
    parts: list[Future[Rubric]], build: Callable[[list[list[Criterion]]], list[Criterion]]
) -> Future[Rubric]:
    """The rubric `build` makes of the parts' criteria once all have arrived (None if one was refused:
    the question is then scored with the reference only, as a refused generated rubric is)."""
    result: Future[Rubric] = Future()
    waiting, lock = [len(parts)], threading.Lock()

    def arrived(_: Future[Rubric]) -> None:
        with lock:
            waiting[0] -= 1
            if waiting[0]:
                return
        try:
            rubrics = [part.result() for part in parts]
            present = [r.criteria for r in rubrics if r.criteria is not None]
            built = build(present) if len(present) == len(rubrics) else None
            result.set_result(Rubric(built, latency_s=max(r.latency_s for r in rubrics)))
        except BaseException as exc:  # a failed request fails the step that waits on it
            result.set_exception(exc)

    for part in parts:
        part.add_done_callback(arrived)
    return result


def make_task(config: TrainConfig, calls: ServiceCalls, tokenizer: Any) -> Task:
    if config.stage == "rubric_generator":
        return RubricWriting(config, calls)
    return AnsweringQuestions(config, calls, tokenizer)
