"""Stage I: the student learns to write rubrics, by the same self-distillation as Stage II.

The task differs from answering questions in three places, which the loop asks this module for:
- the items are the `train` split of the reference rubrics (`data/rubrics/`, or `data` files in that
  format): each a question and a hand-written rubric for it;
- the student's prompt is the rubric writer's: the rubric service's designer prompt for the question
  and its reference answer, with the `rubric` bounds of the config (`rcsd.trainer.prompts.rubric_prompt_ids`);
- the teacher scores the student's rubric (its own sample, token ids verbatim) with
  `context_mode=rubric_writer+reference_rubric`: the same prompt with the reference rubric, in the
  texts that go with `rubric.writer_version` (`TEACHER_TEXTS`): v2's prompt after the question, the
  reference answer and the reference rubric in the generation format (teacher_context v1); the
  release's prompt followed by "Ground Truth Rubric (JSON array)" (teacher_context release).
Sampling, losses and checkpoints are Stage II's. A checkpoint's `adapter/` folder is a rubric
generator: `rcsd serve rubric --adapter DIR`.

`RubricProbe` measures before the first step and after the last the student's mean per-token
log-prob of the held-out reference rubrics, written in the format their prompt asks for (v2: as the
constrained generator writes them, `to_generation_text`; release: a JSON array) and ended by the
end-of-turn token, after their rubric prompts.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from rcsd.client.prompts.teacher_context import ground_truth_rubric_json
from rcsd.client.protocol import Criterion, RubricBounds, TeacherRequest
from rcsd.client.protocol.rubric_format import to_generation_text
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import Question, ReferenceRubric, reference_rubrics
from rcsd.trainer.probe import RecordedProbe
from rcsd.trainer.prompts import rubric_prompt_ids
from rcsd.trainer.service_calls import Rubric, Scored, ServiceCalls
from rcsd.trainer.student import Student, score_completions

RESULTS_FILE = "rubric_probe.json"
# The teacher's texts (teacher_context/<version>) that frame each rubric writer's prompt
TEACHER_TEXTS = {"v2": "v1", "release": "release"}


class RubricWriting:
    """The Stage I task (`rcsd.trainer.tasks.Task`): reference rubrics' questions, the rubric prompt."""

    def __init__(self, config: TrainConfig, calls: ServiceCalls) -> None:
        self.config, self.calls, self.bounds = config, calls, config.rubric.bounds
        items = reference_rubrics("train", config.data)[: config.data_limit]
        self.questions: list[Question] = [item.question for item in items]
        self._reference = {item.question.id: item for item in items}

    def prompt_ids(self, tokenizer: Any, question: Question) -> list[int]:
        return rubric_prompt_ids(
            tokenizer,
            question.prompt_text,
            question.reference_answer,
            self.bounds,
            self.config.rubric.writer_version,
        )

    def fetch_rubrics(self, questions: list[Question]) -> list[Future[Rubric]]:
        """The reference rubrics: known already, so the futures are done."""
        futures: list[Future[Rubric]] = []
        for question in questions:
            future: Future[Rubric] = Future()
            future.set_result(Rubric(self._reference[question.id].criteria, latency_s=0.0))
            futures.append(future)
        return futures

    def score(
        self,
        question: Question,
        rubric: Rubric | None,
        completions: list[list[int]],
        analysis_ids: list[int] | None = None,
    ) -> Future[Scored]:
        """The teacher's scores of the student's rubrics, with the reference rubric in its context."""
        assert rubric is not None and rubric.criteria is not None
        assert analysis_ids is None  # the config refuses teacher.reason_first in Stage I
        request = TeacherRequest(
            question=question.prompt_text,
            reference_answer=question.reference_answer,
            reference_rubric=rubric.criteria,
            rubric_bounds=self.bounds,
            template_version=TEACHER_TEXTS[self.config.rubric.writer_version],
            context_mode=self.config.teacher.context_mode,
            completions=completions,
            top_k=self.config.teacher.top_k,
        )
        return self.calls.submit(request)

    def probe(self, student: Student, run_dir: Path) -> RecordedProbe:
        return RubricProbe(self.config, student, run_dir)


def rubric_text(criteria: list[Criterion], writer_version: str) -> str:
    """A rubric as the writer's prompt asks for it: v2's generation format, or the release's JSON array
    (keys in its example's order, as its Stage I teacher is shown the reference)."""
    return ground_truth_rubric_json(criteria) if writer_version == "release" else to_generation_text(criteria)


@torch.no_grad()
def rubric_logprob(
    model: Any, tokenizer: Any, items: list[ReferenceRubric], bounds: RubricBounds, writer_version: str
) -> float:
    """Mean per-token log-prob of the items' rubrics in their prompt's format (+ end of turn), each after
    its rubric prompt, teacher-forced: how likely the generator is to write the reference rubric."""
    total, tokens = 0.0, 0
    pad_id = tokenizer.pad_token_id or 0
    for item in items:
        question = item.question
        prompt = rubric_prompt_ids(
            tokenizer, question.prompt_text, question.reference_answer, bounds, writer_version
        )
        text = rubric_text(item.criteria, writer_version)
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        target = [*text_ids, tokenizer.eos_token_id]
        total += float(score_completions(model, prompt, [target], pad_id).logprobs_B_T.sum())
        tokens += len(target)
    return total / max(tokens, 1)


class RubricProbe(RecordedProbe):
    """Stage I's held-out probe: `rubric_logprob` of the held-out reference rubrics before and after."""

    name = "rubric probe"
    labels = {
        "reference_rubric_logprob": "student's mean log-prob per token of the held-out reference rubrics "
        "(higher is better)"
    }

    def __init__(self, config: TrainConfig, student: Student, run_dir: Path) -> None:
        super().__init__(config, student, run_dir / RESULTS_FILE)
        self.items = reference_rubrics("heldout", config.probe.data)[: config.probe.questions]

    def _measure(self) -> dict[str, float]:
        rubric = self.config.rubric
        value = rubric_logprob(
            self.student.model, self.student.tokenizer, self.items, rubric.bounds, rubric.writer_version
        )
        return {"reference_rubric_logprob": value}

    def _heading(self) -> list[str]:
        return [
            f"# Stage I run report: {self.config.steps} steps, model {self.config.model}",
            "",
            f"Held-out probe: {len(self.items)} held-out reference rubrics, in the generation format with "
            f"their questions' rubric prompts (bounds {self.config.rubric.min_criteria}.."
            f"{self.config.rubric.max_criteria}); teacher context {self.config.teacher.context_mode}.",
            "",
        ]
