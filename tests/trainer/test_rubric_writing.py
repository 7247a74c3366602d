"""Stage I end to end on the tiny model: the student writes rubrics, the teacher sees the reference rubric,
and the result is a rubric generator the rubric service serves with `--adapter`.

- the student's rubric prompt is the teacher's `rubric_writer` context, id for id; with the teacher on
  that context and LoRA starting as the identity, the first step's KL and loss are 0;
- a 2-step run on the reference rubrics' train split logs, checkpoints a peft adapter and reports the
  held-out reference rubrics' log-prob before and after;
- `rcsd serve rubric --adapter` on that adapter answers valid rubrics, under another model revision,
  and other rubrics than the base model's for the same requests: the adapter's weights are used.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from rcsd.client import RubricClient, TeacherClient
from rcsd.client.protocol import RubricBounds, RubricRequest, TeacherRequest, rubric_problems
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import reference_rubrics
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.prompts import rubric_prompt_ids
from rcsd.trainer.train import main
from tests.trainer.configs import tiny_config

BOUNDS = {
    "min_criteria": 2,
    "max_criteria": 2,
}  # what a random-weight model's grammar-bound output meets quickly


def _config(model: Path, services: dict[str, ServiceProcess], out: Path, **fields: object) -> TrainConfig:
    stage1: dict[str, object] = {
        "stage": "rubric_generator",
        "prompts_per_step": 1,
        "sampling": {"max_new_tokens": 8},
        "teacher": {"context_mode": "rubric_writer+reference_rubric", "top_k": 8},
        "rubric": BOUNDS,
        "services": {"teacher_urls": [services["teacher"].url], "deadline_s": 60},
        "data_limit": 4,
        "probe": {"questions": 2},
    }
    return tiny_config(model, out, **{**stage1, **fields})


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"stage": "rubric_generator"}, "rubric_writer+reference_rubric"),  # the answer modes' default
        ({"stage": "rubric_generator", "method": "grpo", "rollouts_per_prompt": 2}, "method rcsd"),
        ({"teacher": {"context_mode": "rubric_writer"}}, "is for stage rubric_generator"),
        (
            {"stage": "rubric_generator", "teacher": {"context_mode": "rubric_writer", "rationale": "auto"}},
            "rationale",
        ),
    ],
)
def test_config_keeps_stages_and_modes_together(fields, text):
    with pytest.raises(ValueError, match=re.escape(text)):
        TrainConfig.model_validate(fields)
    assert not TrainConfig.model_validate(
        {"stage": "rubric_generator", "teacher": {"context_mode": "rubric_writer+reference_rubric"}}
    ).needs_rubrics


def test_rubric_prompt_is_the_teachers_rubric_writer_context(tiny_model_dir, trainer_services):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    question = reference_rubrics("train")[0].question
    with TeacherClient(trainer_services["teacher"].url) as client:
        response = client.score(
            TeacherRequest(
                question=question.prompt_text,
                reference_answer=question.reference_answer,
                rubric_bounds=RubricBounds(**BOUNDS),
                context_mode="rubric_writer",
                completions=[[5]],
                return_context_ids=True,
            )
        )
    ids = rubric_prompt_ids(
        tokenizer, question.prompt_text, question.reference_answer, RubricBounds(**BOUNDS)
    )
    assert response.context_ids == ids


@pytest.mark.parametrize(("writer_version", "teacher_texts"), [("v2", "v1"), ("release", "release")])
def test_the_teacher_frames_the_students_prompt_with_its_texts(tiny_model_dir, writer_version, teacher_texts):
    """`rubric.writer_version` picks the student's rubric prompt and the teacher's texts around it as a
    pair: the release's "Ground Truth Rubric (JSON array)" turn frames the release's prompt only."""
    from transformers import AutoTokenizer

    from rcsd.trainer.rubric_writing import RubricWriting
    from rcsd.trainer.service_calls import ServiceCalls

    config = TrainConfig.model_validate(
        {
            "stage": "rubric_generator",
            "teacher": {"context_mode": "rubric_writer+reference_rubric"},
            "rubric": {**BOUNDS, "writer_version": writer_version},
            "data_limit": 1,
        }
    )
    calls = ServiceCalls(config)
    sent: list[TeacherRequest] = []
    calls.submit = sent.append  # type: ignore[method-assign,assignment]
    try:
        task = RubricWriting(config, calls)
        [question] = task.questions
        [rubric] = [f.result() for f in task.fetch_rubrics([question])]
        task.score(question, rubric, [[5]])
    finally:
        calls.close()
    assert [r.template_version for r in sent] == [teacher_texts]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bounds = RubricBounds(**BOUNDS)
    expected = rubric_prompt_ids(
        tokenizer, question.prompt_text, question.reference_answer, bounds, writer_version
    )
    assert task.prompt_ids(tokenizer, question) == expected


def test_student_positions_are_the_teachers(tiny_model_dir, trainer_services, tmp_path):
    """Teacher = the same tiny model on the student's own rubric prompt; LoRA's B starts at 0."""
    config = _config(
        tiny_model_dir, trainer_services, tmp_path / "run", steps=1, teacher={"context_mode": "rubric_writer"}
    )
    [record] = read_metrics(main(config))
    assert record["rollout_tokens"] > 0
    assert record["kl_sampled"] == pytest.approx(0.0, abs=1e-4)
    assert record["loss"] == pytest.approx(0.0, abs=1e-5)


def test_stage1_adapter_is_served_as_a_rubric_generator(tiny_model_dir, trainer_services, tmp_path):
    run_dir = main(_config(tiny_model_dir, trainer_services, tmp_path / "run"))
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rubric_fallbacks"] == 0 and r["teacher_tokens"] > 0 for r in records)
    probe = json.loads((run_dir / "rubric_probe.json").read_text())
    before, after = probe["before"]["reference_rubric_logprob"], probe["after"]["reference_rubric_logprob"]
    assert before < 0 and after < 0 and before != after
    assert "held-out reference rubrics" in (run_dir / "report.md").read_text()
    adapter = ckpt.weights_dir(ckpt.latest(run_dir))
    assert (adapter / "adapter_config.json").is_file()

    args = [
        "--backend",
        "hf",
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--adapter",
        str(adapter),
    ]
    args += ["--store-url", f"sqlite:///{tmp_path / 'rubrics.db'}"]
    lora_B = [t for name, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_B and max(t.abs().max().item() for t in lora_B) > 1e-5  # LoRA B starts at 0: it moved
    server = ServiceProcess("rubric", args, tmp_path).start()
    try:
        base = httpx.get(f"{trainer_services['rubric'].url}/v1/info").json()["model"]["revision"]
        requests = [
            RubricRequest(
                question=item.question.prompt_text,
                reference_answer=item.question.reference_answer,
                bounds=RubricBounds(**BOUNDS),
                max_tokens=1300,
            )
            for item in reference_rubrics("heldout")[:2]
        ]
        with (
            RubricClient(server.url, timeout=300) as tuned,
            RubricClient(trainer_services["rubric"].url, timeout=300) as untuned,
        ):
            served = [tuned.generate(request) for request in requests]
            plain = [untuned.generate(request) for request in requests]
        for rubric in served:
            assert rubric_problems(rubric.criteria, RubricBounds(**BOUNDS)) == []
            assert rubric.model_revision != base  # named after the adapter's weights ...
        # ... and decoded with them: the same requests (same seeds) give other rubrics than the base's
        assert [r.criteria for r in served] != [r.criteria for r in plain]
    finally:
        server.stop()
