"""README's "Use with TRL" command, run: examples/trl_rubric_distillation.py trains a real TRL step
(`ServerDistillationTrainer` with `rcsd.client.integrations.trl`) on the tiny model against live
teacher and rubric services, in its own process; and each log-prob TRL got (from the example's
`--record`) is a plain forward of the same weights after the privileged context the library renders
for the student's prompt, for the dataset row TRL sampled."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.client.prompts.teacher_context import render_teacher_context
from rcsd.client.protocol import TeacherRequest
from tests.docs import readme
from tests.fixtures.services import QUESTIONS
from tests.services.teacher.payloads import plain_logprobs

pytest.importorskip("trl", minversion="1.16")

TOP_K = 4
# CPU-sized, after the README's flags (argparse keeps a repeated flag's last value); a batch of all four
# rows, so that both prompt forms are scored
CPU_FLAGS = (
    " --use_cpu --max_steps 1 --per_device_train_batch_size 4 --max_completion_length 6"
    f" --loss_top_k {TOP_K} --learning_rate 1e-2 --logging_steps 1 --save_strategy no --report_to none"
    " --rubric_max_tokens 300"
)


def _rows() -> list[dict]:
    """Two rows with a system prompt as chat messages, two with a plain string prompt."""
    return [
        {
            "prompt": (
                [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q["question"]}]
                if i < 2
                else q["question"]
            ),
            "reference_answer": q["reference_solution"] or q["answer"],
        }
        for i, q in enumerate(QUESTIONS)
    ]


def _messages(row: dict) -> list[dict]:
    prompt = row["prompt"]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def test_readme_trl_example_trains_on_rcsd_teacher_logprobs(tiny_model_dir: Path, trainer_services, tmp_path):
    rows, data, out, record = _rows(), tmp_path / "rows.jsonl", tmp_path / "trl", tmp_path / "teacher.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = readme.substitute(
        readme.bash_block("Use with TRL"),
        {
            "Qwen/Qwen3-1.7B": str(tiny_model_dir),
            "questions.jsonl": str(data),
            "http://127.0.0.1:8001": trainer_services["teacher"].url,
            "http://127.0.0.1:8002": trainer_services["rubric"].url,
            "runs/trl": str(out),
        },
    )
    done = readme.run_bash(f"{command.rstrip()}{CPU_FLAGS} --record {record}", timeout_s=900)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}: {done.stderr[-4000:]}"

    [logged] = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert math.isfinite(logged["loss"]) and logged["loss"] > 0
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    trained = dict(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).named_parameters())
    assert any(not torch.equal(trained[n], p) for n, p in reference.named_parameters())

    # the rows as TRL renders their prompts (conversational: the chat template, a generation prompt)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = [
        tokenizer.apply_chat_template(_messages(row), add_generation_prompt=True, return_dict=True)
        for row in rows
    ]
    by_prompt = {tuple(ids["input_ids"]): row for ids, row in zip(rendered, rows, strict=True)}
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls, "TRL never asked rcsd's teacher"
    for call in calls:
        answer = call["answer"]
        for group in call["groups"]:
            request = TeacherRequest.model_validate(group["request"])
            for completion, i in zip(request.completions, group["sequences"], strict=True):
                sequence, length = call["sequences"][i], call["prompt_lengths"][i]
                row = by_prompt[tuple(sequence[:length])]
                assert completion == sequence[length:]
                assert request.reference_answer == row["reference_answer"]
                assert [m.model_dump() for m in request.messages or []] == _messages(row)
                context = render_teacher_context(tokenizer, request, "release")
                rows_T_V = plain_logprobs(reference, context, completion)
                expected = rows_T_V.gather(-1, torch.tensor(completion)[:, None])[:, 0]
                got = torch.tensor([x[0] for x in answer["actual_logprobs"][i]])
                torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
                top = torch.tensor(answer["logprobs"][i])
                torch.testing.assert_close(top, rows_T_V.topk(TOP_K, dim=-1).values, atol=1e-4, rtol=0)
