"""TRL's ServerDistillationTrainer trains on rcsd's teacher (`rcsd.client.integrations.trl`): a real TRL
step on the tiny model against live teacher and rubric services, and the log-probs TRL got are a plain
forward of the same weights after the privileged context the library renders for the student's prompt."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.client import RubricClient, TeacherClient
from rcsd.client.integrations.trl import RubricTeacher
from rcsd.client.prompts.teacher_context import render_teacher_context
from rcsd.client.protocol import TeacherRequest
from tests.fixtures.services import QUESTIONS
from tests.services.teacher.payloads import plain_logprobs

trl = pytest.importorskip("trl", minversion="1.16")
from trl.experimental.server_distillation import ServerDistillationConfig  # noqa: E402

from rcsd.recipes.trl import RubricDistillationTrainer  # noqa: E402

TOP_K = 4


def _rows() -> list[dict]:
    return [
        {
            "prompt": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": q["question"]},
            ],
            "reference_answer": q["reference_solution"] or q["answer"],
        }
        for q in QUESTIONS
    ]


class Recording(RubricTeacher):
    """Keeps what TRL asked and got, for the independent check."""

    calls: list[tuple[list[list[int]], list[int], dict]]

    def get_sequence_logprobs(self, sequences, prompt_lengths, top_logprobs=1, temperature=1.0, **transport):
        answer = super().get_sequence_logprobs(
            sequences, prompt_lengths, top_logprobs, temperature, **transport
        )
        self.calls.append((sequences, prompt_lengths, answer))
        return answer


def test_a_trl_step_trains_on_rcsd_teacher_logprobs(tiny_model_dir: Path, trainer_services, tmp_path):
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = _rows()
    args = ServerDistillationConfig(
        output_dir=str(tmp_path),
        # TRL requires a URL; RubricDistillationTrainer never lets TRL connect to it
        teacher_model_server_url=trainer_services["teacher"].url,
        max_steps=1,
        per_device_train_batch_size=2,
        max_completion_length=6,
        loss_top_k=TOP_K,
        beta=0.0,  # forward KL over the teacher's top-k
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
    )
    teacher = TeacherClient(trainer_services["teacher"].url)
    rubrics = RubricClient(trainer_services["rubric"].url)
    bounds = {"bounds": {"min_criteria": 1, "max_criteria": 2}, "max_tokens": 300}
    recording = Recording(teacher, tokenizer, rows, rubrics=rubrics, rubric_options=bounds)
    recording.calls = []
    trainer = RubricDistillationTrainer(
        model, teacher=recording, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()

    assert recording.calls, "TRL never asked rcsd's teacher"
    [logged] = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert math.isfinite(logged["loss"]) and logged["loss"] > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    by_prompt = {recording._prompt_key(tokenizer, row["prompt"]): row for row in rows}
    sequences, lengths, answer = recording.calls[0]
    for i, (sequence, length) in enumerate(zip(sequences, lengths, strict=True)):
        row, completion = by_prompt[tuple(sequence[:length])], sequence[length:]
        request = recording._request(tuple(sequence[:length]), [completion], TOP_K, 1.0)
        assert request.messages is not None and request.messages[0].content == row["prompt"][0]["content"]
        context = render_teacher_context(tokenizer, TeacherRequest.model_validate(request), "release")
        rows_T_V = plain_logprobs(reference, context, completion)
        expected = rows_T_V.gather(-1, torch.tensor(completion)[:, None])[:, 0]
        got = torch.tensor([x[0] for x in answer["actual_logprobs"][i]])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        top = torch.tensor(answer["logprobs"][i])
        torch.testing.assert_close(top, rows_T_V.topk(TOP_K, dim=-1).values, atol=1e-4, rtol=0)
