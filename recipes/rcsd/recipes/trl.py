"""TRL's `ServerDistillationTrainer` with rcsd's rubric-conditioned teacher (TRL 1.16, `pip install rcsd[trl]`).

    teacher = RubricTeacher(TeacherClient(teacher_url), tokenizer, rows, rubrics=RubricClient(rubric_url))
    trainer = RubricDistillationTrainer(
        model, teacher=teacher, args=ServerDistillationConfig(teacher_model_server_url=teacher_url, ...),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )
    trainer.train()

TRL's trainer builds its own teacher client in `__init__` (a vLLM client that checks the URL's /health
and asks its /v1/models), and TRL has no public hook for another. This subclass builds it with that
client stubbed out and sets `teacher_client`, the one object TRL scores with (`get_sequence_logprobs`,
answered by `rcsd.client.integrations.trl.RubricTeacher`). Generation, the loss and logging are TRL's.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import trl.generation.vllm_client as trl_vllm_client
from trl.experimental.server_distillation import ServerDistillationTrainer

from rcsd.client.integrations.trl import RubricTeacher


class _NoVLLMClient:
    """Stands in for TRL's VLLMClient while the trainer is built: no connection to a vLLM server."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


class RubricDistillationTrainer(ServerDistillationTrainer):
    """`ServerDistillationTrainer` whose teacher log-probs come from rcsd's teacher service."""

    def __init__(self, model: Any, *, teacher: RubricTeacher, **kwargs: Any) -> None:
        with mock.patch.object(trl_vllm_client, "VLLMClient", _NoVLLMClient):
            super().__init__(model, **kwargs)
        self.teacher_client = teacher
