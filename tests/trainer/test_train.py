"""The training loop end to end: the tiny model, real hf teacher and rubric services on loopback.

- the student's positions are the teacher's: with the teacher seeing the student's own prompt
  (`none`) and LoRA starting as the identity, the first step's KL and loss are 0;
- an RCSD run logs every metric, checkpoints, draws its curves, and a run resumed from its step-2
  checkpoint ends with the same weights as the run that never stopped;
- (two gloo ranks, DDP and FSDP: tests/trainer/test_distributed.py)
- OPSD and GRPO run in the same loop; a group the teacher itself refuses fails the step instead of
  training on the groups it scored;
- `epochs` sets the step count from the questions the privileged-prompt length filter keeps.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch

from rcsd.client import BadRequestError
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import load_config
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.data.release import filter_prompt_ids
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.train import CONFIG_FILE, main
from tests.fixtures.services import QUESTIONS
from tests.trainer.configs import adapter_weights, answer_config

PHASES = ("rubrics", "rollout", "teacher_wait", "student", "optimizer", "update", "step")
EVERY_STEP = ("loss", "rollout_tokens", "rollout_len_mean", "truncation_rate", "tokens_per_s", "lr")
TEACHER_METRICS = ("kl_sampled", "teacher_logprob_mean", "teacher_tokens", "teacher_latency_s")


def test_student_positions_are_the_teachers(tiny_model_dir, trainer_services, questions_file, tmp_path):
    """Teacher = the same tiny model on the student's own prompt; LoRA's B starts at 0, so the
    student is the teacher: any misaligned position or re-tokenised id would show as KL > 0.
    The held-out probe measures the same thing before the first step."""
    config = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        tmp_path / "run",
        steps=1,
        teacher={"context_mode": "none", "top_k": 8},
        probe={"data": [str(questions_file)], "questions": 2, "max_new_tokens": 4},
    )
    run_dir = main(config)
    [record] = read_metrics(run_dir)
    assert record["rollout_tokens"] > 0
    assert record["kl_sampled"] == pytest.approx(0.0, abs=1e-4)
    assert record["loss"] == pytest.approx(0.0, abs=1e-5)

    probe = json.loads((run_dir / "probe.json").read_text())
    assert probe["before"]["topk_kl"] == pytest.approx(0.0, abs=1e-5)
    assert probe["before"]["sampled_kl"] == pytest.approx(0.0, abs=1e-4)
    assert probe["after"]["reference_logprob"] != probe["before"]["reference_logprob"]
    assert probe["before"]["topk_kl_per_question"] == pytest.approx([0.0, 0.0], abs=1e-5)  # per question
    assert len(probe["after"]["reference_logprob_per_question"]) == 2
    assert "| measure | before | after | change |" in (run_dir / "report.md").read_text()


def test_rcsd_run_logs_checkpoints_and_resumes_exactly(
    tiny_model_dir, trainer_services, questions_file, tmp_path
):
    run_dir = tmp_path / "run"
    config = answer_config(
        tiny_model_dir, trainer_services, questions_file, run_dir, steps=4, checkpoint_every=2, plots=True
    )
    main(config)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        for key in (*EVERY_STEP, *TEACHER_METRICS, *(f"time/{p}" for p in PHASES)):
            assert key in record, key
        assert record["rollout_tokens"] == pytest.approx(record["rollout_len_mean"] * 2)
    assert (run_dir / "plots" / "loss.png").is_file() and (run_dir / "plots" / "kl_sampled.png").is_file()
    assert load_config(run_dir / CONFIG_FILE) == config
    uninterrupted = adapter_weights(run_dir, 4)
    assert any(not torch.equal(uninterrupted[k], v) for k, v in adapter_weights(run_dir, 2).items())

    # stopped after step 2: only what checkpoint 2 holds survives
    shutil.rmtree(ckpt.checkpoint_dir(run_dir, 4))
    with pytest.raises(FileExistsError):
        main(config)  # an existing run is never overwritten without --resume
    main(config, resume=True)
    resumed = adapter_weights(run_dir, 4)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_opsd_and_grpo_in_the_same_loop(tiny_model_dir, trainer_services, questions_file, tmp_path):
    opsd = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        tmp_path / "opsd",
        steps=1,
        method="opsd",
        teacher={"context_mode": "reference", "top_k": 8},
    )
    [record] = read_metrics(main(opsd))
    assert all(key in record for key in TEACHER_METRICS) and record["rubric_fallbacks"] == 0
    assert record["time/rubrics"] < 0.01  # none fetched

    grpo = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        tmp_path / "grpo",
        steps=1,
        method="grpo",
        rollouts_per_prompt=3,
    )
    [record] = read_metrics(main(grpo))
    assert 0.0 <= record["reward_mean"] <= 1.0
    assert not any(key in record for key in TEACHER_METRICS)


def _teacher_requests(teacher: ServiceProcess, status: str) -> float:
    prefix = f'rcsd_requests_total{{route="/v1/teacher_logprobs",status="{status}"}}'
    lines = httpx.get(f"{teacher.url}/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))


def test_a_teacher_error_fails_the_step(tiny_model_dir, trainer_services, tmp_path):
    """The teacher itself refuses one group of the step and scores the other; the step fails whole.

    A teacher with max_model_len 1024 and a question whose context is longer: the client checks only
    the completions against that limit (the context is rendered server-side), so the request is sent
    and the teacher answers 422, while the step's other, short group is scored (200). With a
    checkpoint every step, a step trained on the scored group alone would leave checkpoint 1.
    """
    from transformers import AutoTokenizer

    padding = " Think about the units and the numbers given, then work it out step by step." * 60
    long_question = {**QUESTIONS[0], "id": "t-long", "question": QUESTIONS[0]["question"] + padding}
    assert len(AutoTokenizer.from_pretrained(tiny_model_dir)(long_question["question"]).input_ids) > 1100
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in (QUESTIONS[2], long_question)))
    teacher = ServiceProcess(
        "teacher",
        ["--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32", "--max-model-len", "1024"],
        tmp_path,
    ).start()
    try:
        config = answer_config(
            tiny_model_dir,
            {**trainer_services, "teacher": teacher},
            questions,
            tmp_path / "run",
            steps=1,
            checkpoint_every=1,
            method="opsd",
            teacher={"context_mode": "reference", "top_k": 8},
        )
        with pytest.raises(BadRequestError, match="exceed max_model_len 1024") as caught:
            main(config)
        assert caught.value.status_code == 422  # the teacher's answer, not a client-side refusal
        assert _teacher_requests(teacher, "422") == 1 and _teacher_requests(teacher, "200") == 1
    finally:
        teacher.stop()
    assert ckpt.latest(tmp_path / "run") is None
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or read_metrics(tmp_path / "run") == []


def test_epochs_count_the_questions_the_length_filter_keeps(
    tiny_model_dir, trainer_services, tmp_path, capsys
):
    """`epochs: 1` over 4 questions of which one's privileged prompt is over the budget: 3 kept, 2 per
    step, so ceil(3 / 2) = 2 steps (not `steps`), the last one checkpointed and the linear schedule at
    0 after it; the run reports the drop."""
    from transformers import AutoTokenizer

    padding = " Think about the units and the numbers given, then work it out step by step." * 20
    long_question = {**QUESTIONS[0], "id": "t-long", "question": QUESTIONS[0]["question"] + padding}
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in (QUESTIONS[0], long_question, *QUESTIONS[2:])))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = {q.id: len(filter_prompt_ids(tokenizer, q)) for q in load_questions([path])}
    budget = max(n for qid, n in lengths.items() if qid != "t-long")
    assert lengths["t-long"] > budget
    config = answer_config(
        tiny_model_dir,
        trainer_services,
        path,
        tmp_path / "run",
        steps=7,
        epochs=1,
        data_max_privileged_prompt_tokens=budget,
        lr_schedule="linear",
        method="opsd",
        teacher={"context_mode": "reference", "top_k": 8},
    )
    run_dir = main(config)
    out = capsys.readouterr().out
    assert "dropped 1 of 4 questions" in out and "epochs 1: 2 steps" in out
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["lr"] == pytest.approx(config.lr / 2) and records[1]["lr"] == 0.0
    assert ckpt.latest(run_dir) == ckpt.checkpoint_dir(run_dir, 2)
