"""The trainer's side of the two services: rubrics fetched ahead and teacher scoring per group, in threads.

Both run in worker threads with the blocking clients, so the main thread keeps sampling rollouts while
a group's scores and the next step's rubrics are on the way. The clients retry 429/503/5xx and
connection errors up to the config's deadline (long: a training run waits out a restarting service);
past it, or on any other error, `result()` raises and the step fails. A step is never trained on
part of its batch.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rcsd.client import (
    BadRequestError,
    Criterion,
    RubricClient,
    RubricRequest,
    TeacherClient,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.client.protocol import ContextMode
from rcsd.client.stock_vllm import StockVLLMTeacher
from rcsd.trainer.config import RubricConfig, ServicesConfig, TrainConfig
from rcsd.trainer.data.questions import Question

# Calls in flight at once per service and rank: enough to keep a replica's batcher fed.
MAX_IN_FLIGHT = 8


@dataclass(frozen=True)
class Rubric:
    """A question's rubric; `criteria` is None when the service refused it (422) and the config allows that."""

    criteria: list[Criterion] | None
    latency_s: float


@dataclass(frozen=True)
class Scored:
    response: TeacherResponse
    latency_s: float
    context_mode: str  # what was asked (a refused rubric falls back to "reference")


def rubric_request(settings: RubricConfig, question: Question) -> RubricRequest:
    """A question's rubric request: the store keys on it, so a rubric asked for ahead is the one training gets."""
    return RubricRequest(
        question=question.prompt_text,
        reference_answer=question.reference_answer,
        bounds=settings.bounds,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=settings.seed,
        max_tokens=settings.max_tokens,
    )


def teacher_client(services: ServicesConfig, options: dict[str, Any]) -> TeacherClient | StockVLLMTeacher:
    """rcsd's teacher service, or a stock vLLM server scored with prompt_logprobs (`teacher_server`)."""
    if services.teacher_server == "stock_vllm":
        return StockVLLMTeacher(services.teacher_urls, **options)
    return TeacherClient(services.teacher_urls, pin_teacher=services.pin_teacher, **options)


class ServiceCalls:
    """Clients and worker threads for one rank; `close()` stops them."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        services = config.services
        options: dict[str, Any] = {
            "api_key": services.api_key,
            "timeout": services.timeout_s,
            "deadline": services.deadline_s,
            "max_retries": services.max_retries,
            # scoring and rubric requests are idempotent (rubrics are stored by content): a slow answer
            # is asked again rather than failing the run
            "retry_read_timeouts": True,
        }
        self.teacher = teacher_client(services, options) if config.method != "grpo" else None
        self.rubrics = RubricClient(services.rubric_urls, **options) if config.needs_rubrics else None
        self._teacher_pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="teacher")
        self._rubric_pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="rubric")

    def check_teacher(self, tokenizer: Any, vocab_size: int) -> str | None:
        """Refuse a teacher with another tokenizer; returns the teacher's model name."""
        if self.teacher is None:
            return None
        return self.teacher.check_compatible(tokenizer, vocab_size=vocab_size).model.name

    def fetch_rubrics(self, questions: list[Question]) -> list[Future[Rubric]]:
        """One request per question, sent now; an empty list when the method needs no rubric."""
        if self.rubrics is None:
            return []
        return [self._rubric_pool.submit(self._rubric, q) for q in questions]

    def context_mode(self, rubric: Rubric | None) -> ContextMode:
        """The configured context mode, or `reference` for a question whose rubric was refused."""
        if rubric is not None and rubric.criteria is None:
            return "reference"
        return self.config.teacher.context_mode

    def score(
        self,
        question: Question,
        rubric: Rubric | None,
        completions: list[list[int]],
        analysis_ids: list[int] | None = None,
    ) -> Future[Scored]:
        """The teacher's scores of one group's completions (sent as soon as it is called).

        `analysis_ids` (teacher.reason_first): the analysis the rollout engine sampled, scored after as
        the released layout has it. The request names the student's prompt version and thinking, so
        the teacher renders what the student saw.
        """
        assert self.teacher is not None
        teacher = self.config.teacher
        request = TeacherRequest(
            question=question.prompt_text,
            reference_answer=question.reference_answer,
            rubric=rubric.criteria if rubric is not None else None,
            rationale=teacher.rationale,
            rationale_ids=analysis_ids,
            template_version=self.config.sampling.prompt_version,
            student_thinking=self.config.sampling.enable_thinking,
            teacher_thinking=teacher.thinking,
            analysis_thinking=teacher.analysis_thinking,
            context_mode=self.context_mode(rubric),
            completions=completions,
            top_k=teacher.top_k,
        )
        return self.submit(request)

    def submit(self, request: TeacherRequest) -> Future[Scored]:
        """The teacher's scores of a prepared request, in a worker thread (Stage I builds its own)."""
        assert self.teacher is not None
        return self._teacher_pool.submit(self._score, request)

    def close(self) -> None:
        self._rubric_pool.shutdown(wait=False, cancel_futures=True)
        self._teacher_pool.shutdown(wait=False, cancel_futures=True)
        for client in (self.teacher, self.rubrics):
            if client is not None:
                client.close()

    def _rubric(self, question: Question) -> Rubric:
        assert self.rubrics is not None
        request = rubric_request(self.config.rubric, question)
        started = time.perf_counter()
        try:
            criteria: list[Criterion] | None = self.rubrics.generate(request).criteria
        except BadRequestError:
            if self.config.rubric.on_failure == "fail":
                raise
            criteria = None  # counted in the step's metrics (rubric_fallbacks)
        return Rubric(criteria, time.perf_counter() - started)

    def _score(self, request: TeacherRequest) -> Scored:
        assert self.teacher is not None
        started = time.perf_counter()
        response = self.teacher.score(request)
        if [c.token_ids.tolist() for c in response.completions] != request.completions:
            raise RuntimeError(
                "the teacher echoed other token ids than it was sent; refusing to train on them"
            )
        return Scored(response, time.perf_counter() - started, request.context_mode)
