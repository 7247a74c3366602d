"""The released reason-first path end to end: real rubric and teacher services, the real trainer.

Every step the rollout engine samples one analysis per question (from the student's current weights),
the run records it in `analyses.jsonl`, and the teacher scores the answers after
[reason-first prompt + that analysis + transition]: the context lengths the teacher reports (in the
`teacher_tokens` metric) equal the released layout rendered from the recorded analysis ids.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from rcsd.client.prompts.teacher_context import render_teacher_context
from rcsd.client.protocol import TeacherRequest
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.service_calls import ServiceCalls
from rcsd.trainer.train import main
from tests.trainer.configs import answer_config


def test_analysis_sampled_each_step_recorded_and_scored_after(
    tiny_model_dir, trainer_services, questions_file, tmp_path
):
    config = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        tmp_path / "run",
        steps=2,
        teacher={"top_k": 8, "reason_first": True, "analysis_max_tokens": 7},
    )
    run_dir = main(config)
    analyses = [json.loads(line) for line in (run_dir / "analyses.jsonl").read_text().splitlines()]
    assert [a["step"] for a in analyses] == [1, 1, 2, 2]
    assert all(1 <= a["tokens"] == len(a["token_ids"]) <= 7 for a in analyses)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = {q.id: q for q in load_questions(config.data)}
    calls = ServiceCalls(config)  # the rubric service stores rubrics: the same request, the same rubric
    try:
        for record in read_metrics(run_dir):
            mine = [a for a in analyses if a["step"] == record["step"]]
            assert record["analysis_len_mean"] == pytest.approx(sum(a["tokens"] for a in mine) / len(mine))
            contexts = 0
            for analysis in mine:
                question = questions[analysis["question_id"]]
                [rubric] = [f.result() for f in calls.fetch_rubrics([question])]
                request = TeacherRequest(
                    question=question.prompt_text,
                    reference_answer=question.reference_answer,
                    rubric=rubric.criteria,
                    context_mode=calls.context_mode(rubric),
                    rationale_ids=analysis["token_ids"],
                    completions=[[0]],
                )
                contexts += len(render_teacher_context(tokenizer, request, "release"))
            assert record["teacher_tokens"] - record["rollout_tokens"] == contexts
    finally:
        calls.close()


def test_reason_first_refuses_what_it_cannot_mean(tiny_model_dir, tmp_path):
    from pydantic import ValidationError

    from tests.trainer.configs import tiny_config

    for teacher in (
        {"reason_first": True, "rationale": "auto"},
        {"reason_first": True, "context_mode": "none"},
    ):
        with pytest.raises(ValidationError, match="reason_first"):
            tiny_config(tiny_model_dir, tmp_path, teacher=teacher)
