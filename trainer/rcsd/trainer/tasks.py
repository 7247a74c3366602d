"""What the loop trains on: a task gives the items, the student's prompt for one, rubrics, teacher scores.

The loop (`rcsd.trainer.train`) is the same for both stages; only the task differs:
- `AnsweringQuestions` (Stage II, `stage: reasoner`): science questions answered with the student's own
  prompt, rubrics from the rubric service, the teacher's scores of the answers;
- `RubricWriting` (Stage I, `stage: rubric_generator`, `rcsd.trainer.rubric_writing`): the student writes
  rubrics, and the teacher sees the reference rubrics.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from rcsd.client.prompts.teacher_context import analysis_prompt_ids
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import Question, load_questions
from rcsd.trainer.probe import Probe, RecordedProbe
from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rubric_writing import RubricWriting
from rcsd.trainer.service_calls import Rubric, Scored, ServiceCalls
from rcsd.trainer.student import Student


class Task(Protocol):
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

    def __init__(self, config: TrainConfig, calls: ServiceCalls) -> None:
        self.config, self.calls = config, calls
        self.questions = load_questions(config.data)[: config.data_limit]
        self._rubric_source = {q.id: q for q in self.questions}  # whose rubric each question is shown
        if config.teacher.rubric_of == "shifted":
            if len(self.questions) < 2:
                raise ValueError("teacher.rubric_of shifted needs at least two training questions")
            shifted = self.questions[1:] + self.questions[:1]
            self._rubric_source = {q.id: other for q, other in zip(self.questions, shifted, strict=True)}

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
        """The rubrics the teacher is shown: each question's own, or with `teacher.rubric_of: shifted`
        the next training question's."""
        return self.calls.fetch_rubrics([self._rubric_source.get(q.id, q) for q in questions])

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


def make_task(config: TrainConfig, calls: ServiceCalls) -> Task:
    if config.stage == "rubric_generator":
        return RubricWriting(config, calls)
    return AnsweringQuestions(config, calls)
