"""TRL trains with rcsd's rubric-conditioned teacher: a drop-in for the teacher client of TRL's
`ServerDistillationTrainer` (`trl.experimental.server_distillation`, TRL 1.16).

    from trl.experimental.server_distillation import ServerDistillationConfig, ServerDistillationTrainer
    from rcsd.client import RubricClient, TeacherClient
    from rcsd.client.integrations.trl import RubricTeacher

    trainer = ServerDistillationTrainer(model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.teacher_client = RubricTeacher(
        TeacherClient(teacher_url), tokenizer, dataset, rubrics=RubricClient(rubric_url)
    )
    trainer.train()   # TRL's own generation and loss; the teacher's log-probs are rcsd's

TRL asks its teacher client for `get_sequence_logprobs(sequences, prompt_lengths, top_logprobs,
temperature)` over the student's token ids only: TRL's stock teacher is a vLLM server scoring the
student's prompt. Here each prompt is looked up among the dataset's rows (the row's chat messages
rendered as TRL renders them: `apply_chat_template(..., add_generation_prompt=True)`), and the row's
question and reference answer, with a rubric from the rubric service, make the teacher's privileged
context; the student's messages go with it (the `none` mode repeats them exactly). Completions of one
prompt are one rcsd group (the context computed once). Rows: a `prompt` (chat messages, TRL's
conversational format), a `question` (default: the last user message) and `reference_answer`.

No torch and no TRL here: the answer is TRL's plain lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rcsd.client._exceptions import BadRequestError
from rcsd.client.protocol import (
    ChatMessage,
    ContextMode,
    Criterion,
    RubricRequest,
    TeacherRequest,
)
from rcsd.client.protocol.teacher import MODES_SHOWING_RUBRIC
from rcsd.client.rubric import RubricClient
from rcsd.client.teacher import TeacherClient

Row = Mapping[str, Any]


class RubricTeacher:
    """TRL's `VLLMClient.get_sequence_logprobs`, answered by rcsd's teacher after a privileged context."""

    def __init__(
        self,
        teacher: TeacherClient,
        tokenizer: Any,
        rows: Iterable[Row],
        *,
        rubrics: RubricClient | None = None,
        context_mode: ContextMode = "rubric+reference",
        rubric_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, bool | int | float | str] | None = None,
        record: Path | None = None,
    ) -> None:
        """`rows`: the training dataset's rows (any iterable of mappings); `chat_template_kwargs`: the
        trainer's own (`DistillationConfig.chat_template_kwargs`), so prompts are found as TRL renders them;
        `rubric_options`: RubricRequest fields (bounds, max_tokens, ...). A question whose rubric the
        service refuses is scored in the `reference` mode, as rcsd's trainer does. `record`: a JSONL file
        that gets one line per call, to audit what the teacher was shown: TRL's token ids, each request
        sent (question, reference, rubric, the student's messages) with the sequences it scored, the answer."""
        if context_mode in MODES_SHOWING_RUBRIC and rubrics is None:
            raise ValueError(f"context_mode {context_mode!r} shows a rubric: pass rubrics=RubricClient(...)")
        self.teacher, self.rubrics = teacher, rubrics
        self.context_mode = context_mode
        self.rubric_options = dict(rubric_options or {})
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.record = record
        self._rows = {self._prompt_key(tokenizer, row["prompt"]): row for row in rows}
        self._criteria: dict[str, list[Criterion] | None] = {}

    def _prompt_key(self, tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[int, ...]:
        rendered = tokenizer.apply_chat_template(
            list(messages),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **self.template_kwargs,
        )
        return tuple(rendered["input_ids"])

    def get_sequence_logprobs(
        self,
        sequences: list[list[int]],
        prompt_lengths: list[int],
        top_logprobs: int = 1,
        temperature: float = 1.0,
        **_transport: object,  # TRL's chunk_size / max_concurrent_requests: the client splits on its own
    ) -> dict[str, list]:
        """Per completion token: the teacher's top-k log-probs and ids, and the log-prob of the token
        itself (TRL's shapes: [T][K], [T][K], [T][1], [T][1] per sequence)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (sequence, length) in enumerate(zip(sequences, prompt_lengths, strict=True)):
            if len(sequence) > length:  # an empty completion has nothing to score
                groups.setdefault(tuple(sequence[:length]), []).append(i)
        requests = [
            self._request(
                prompt, [sequences[i][prompt_lengths[i] :] for i in members], top_logprobs, temperature
            )
            for prompt, members in groups.items()
        ]
        out: dict[str, list] = {key: [[] for _ in sequences] for key in _KEYS}
        for members, response in zip(groups.values(), self.teacher.score_batch(requests), strict=True):
            for i, scores in zip(members, response.completions, strict=True):
                assert scores.topk_ids is not None and scores.topk_logprobs is not None
                out["logprobs"][i] = scores.topk_logprobs.tolist()
                out["logprob_token_ids"][i] = scores.topk_ids.tolist()
                out["actual_logprobs"][i] = [[x] for x in scores.logprobs.tolist()]
                out["actual_token_ids"][i] = [[t] for t in scores.token_ids.tolist()]
        if self.record is not None:
            sent = [
                {"sequences": members, "request": request.model_dump(mode="json", exclude_none=True)}
                for members, request in zip(groups.values(), requests, strict=True)
            ]
            line = {"sequences": sequences, "prompt_lengths": prompt_lengths, "groups": sent, "answer": out}
            with self.record.open("a") as file:
                file.write(json.dumps(line) + "\n")
        return out

    def _request(
        self, prompt: tuple[int, ...], completions: list[list[int]], top_k: int, temperature: float
    ) -> TeacherRequest:
        row = self._rows.get(prompt)
        if row is None:
            raise KeyError(
                "a prompt TRL sampled is not among the rows RubricTeacher was given (or was rendered "
                "with other chat_template_kwargs): it cannot find its question and reference"
            )
        messages = [ChatMessage.model_validate(m) for m in row["prompt"]]
        question = row.get("question") or messages[-1].content
        rubric = self._rubric(question, row.get("reference_answer"))
        refused = self.context_mode in MODES_SHOWING_RUBRIC and rubric is None
        return TeacherRequest(
            question=question,
            reference_answer=row.get("reference_answer"),
            rubric=rubric,
            context_mode="reference" if refused else self.context_mode,
            messages=messages,
            chat_template_kwargs=self.template_kwargs or None,
            completions=completions,
            top_k=top_k,
            temperature=temperature,
        )

    def _rubric(self, question: str, reference_answer: str | None) -> list[Criterion] | None:
        """The rubric service's rubric of `question`, asked once per question (None: refused)."""
        if self.context_mode not in MODES_SHOWING_RUBRIC:
            return None
        if question not in self._criteria:
            assert self.rubrics is not None
            options = {"question": question, "reference_answer": reference_answer, **self.rubric_options}
            try:
                self._criteria[question] = self.rubrics.generate(
                    RubricRequest.model_validate(options)
                ).criteria
            except BadRequestError:  # the model wrote no valid rubric for it
                self._criteria[question] = None
        return self._criteria[question]


_KEYS = ("logprobs", "logprob_token_ids", "actual_logprobs", "actual_token_ids")
