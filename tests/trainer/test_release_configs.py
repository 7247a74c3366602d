"""The shipped GPU recipes against the release's values (notes: release_facts.md section 4)."""

from __future__ import annotations

import pytest

from rcsd.trainer.config import load_config, shipped_config

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# carriegu0818/RCSD scripts/run_opsd_rar_* (S1SH L44-75) and opsd_train_rubric.py (S1TRAIN L73-79)
STAGE1_RELEASE = {
    "model": "Qwen/Qwen3-8B",
    "lr": 5e-6,
    "prompts_per_step": 32,  # 2 processes x GA 16 x bs 1
    "rollouts_per_prompt": 1,
    "lora.r": 64,
    "lora.alpha": 128,
    "lora.target_modules": ALL_PROJ,
    "sampling.max_new_tokens": 4096,
    "sampling.temperature": 1.2,
    "sampling.top_p": 0.95,
    "sampling.top_k": 20,
    "loss.name": "topk_fkl",  # beta 0 (the b0 script); full vocabulary there, top-K here
    "loss.tau": 1.2,
    "loss.clip": 0.05,
    "loss.normalize": "completion",  # S1TRAINER: the same per-micro-batch (one completion) mean
    "epochs": 3,
    "teacher.context_mode": "rubric_writer+reference_rubric",
    "rubric.writer_version": "release",  # data_collator_rubric.py's prompts (docs/fidelity.md row 2f)
    "stage": "rubric_generator",
}


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("field", sorted(STAGE1_RELEASE))
def test_stage1_qwen3_matches_release(field: str) -> None:
    config = load_config(shipped_config("stage1_qwen3_8b_gpu.yaml"))
    assert _get(config, field) == STAGE1_RELEASE[field]


# carriegu0818/RCSD RUNSH (f2035f8) L52-82 and TRL/PEFT defaults (release_facts 4.1)
STAGE2_RELEASE = {
    "model": "Qwen/Qwen3-8B",
    "lr": 5e-6,
    "lr_schedule": "linear",
    "prompts_per_step": 32,
    "rollouts_per_prompt": 1,
    "lora.r": 16,
    "lora.alpha": 32,
    "lora.dropout": 0.05,
    "lora.target_modules": ["q_proj", "v_proj"],
    "sampling.max_new_tokens": 4096,
    "sampling.temperature": 1.2,
    "sampling.top_p": 0.95,
    "sampling.top_k": 20,
    "loss.name": "topk_fkl",
    "loss.tau": 1.2,
    "loss.clip": 0.05,
    "loss.normalize": "completion",  # TRAINER L536-550: sum / mask.sum() per completion, then GA's mean
    "teacher.top_k": 20,
    "teacher.reason_first": True,
    "data_max_privileged_prompt_tokens": 2048,  # TRAIN: max_reward_prompt_tokens
    # TRAIN L595-836: the Stage II rubrics' sampling (docs/fidelity.md row 3)
    "rubric.temperature": 0.7,
    "rubric.top_p": 0.95,
    "rubric.top_k": 20,
    "rubric.max_tokens": 1024,
}


@pytest.mark.parametrize("field", sorted(STAGE2_RELEASE))
def test_qwen3_rcsd_matches_release(field: str) -> None:
    config = load_config(shipped_config("qwen3_8b_gpu.yaml"))
    assert _get(config, field) == STAGE2_RELEASE[field]


def test_qwen3_rcsd_asks_for_rubrics_sampled_as_released() -> None:
    """The request the trainer sends (and the store keys on) carries the recipe's rubric sampling."""
    from rcsd.trainer.data.questions import Question
    from rcsd.trainer.service_calls import rubric_request

    config = load_config(shipped_config("qwen3_8b_gpu.yaml"))
    question = Question(
        id="q", source="s", subject="physics", answer_type="numeric", question="2+2?", answer="4"
    )
    request = rubric_request(config.rubric, question)
    assert (request.temperature, request.top_p, request.top_k, request.max_tokens) == (0.7, 0.95, 20, 1024)


def test_qwen3_rcsd_trains_the_release_epochs() -> None:
    """RUNSH L58 --num_train_epochs 3 (the comparison keeps a fixed step budget per arm instead)."""
    assert load_config(shipped_config("qwen3_8b_gpu.yaml")).epochs == 3


def _compare_arms() -> dict:
    from pathlib import Path

    from rcsd.recipes.compare.config import load_compare_config

    compare = load_compare_config(shipped_config("compare_qwen3_8b_gpu.yaml"))
    configs = {arm.name: compare.arm_config(arm, Path("unused")) for arm in compare.runs()}
    return {name: config for name, config in configs.items() if config is not None}


# what the comparison's training must share with qwen3_8b_gpu.yaml: the release's settings
SHARED_WITH_RECIPE = [
    *STAGE2_RELEASE, "lora.dropout", "lora.target_modules", "lr_schedule", "sampling.prompt_version",
    "sampling.enable_thinking", "teacher.thinking", "teacher.analysis_thinking", "teacher.analysis_max_tokens",
]  # fmt: skip


@pytest.mark.parametrize("field", SHARED_WITH_RECIPE)
def test_compare_rcsd_arm_trains_as_the_recipe(field: str) -> None:
    recipe = load_config(shipped_config("qwen3_8b_gpu.yaml"))
    assert _get(_compare_arms()["rcsd"], field) == _get(recipe, field)


def test_compare_names_both_opsd_baselines() -> None:
    """The RCSD repo's reference-only run (its trainer, so its clip 0.05 and reason-first) and the OPSD
    paper's (generalised JSD 0.5 at tau 1.1, no clip, not reason-first): named, not one ambiguous OPSD."""
    arms = _compare_arms()
    repo, paper = arms["opsd-rcsd-repo"], arms["opsd-paper"]
    assert repo.teacher.context_mode == paper.teacher.context_mode == "reference"
    assert (repo.loss.name, repo.loss.tau, repo.loss.clip, repo.teacher.reason_first) == (
        "topk_fkl",
        1.2,
        0.05,
        True,
    )
    assert (paper.loss.name, paper.loss.beta, paper.loss.tau, paper.loss.clip) == ("topk_jsd", 0.5, 1.1, None)
    assert not paper.teacher.reason_first and "opsd" not in arms


# The release's rubric ablations (scripts/run_opsd_rar_reward_8b_2gpu_{cache_random,generic,cache_noisy,
# cache_reduced}_rubric_b0.sh @ 8509ca9, --rubric_source gt): one arm each, RCSD as the rcsd arm otherwise
ABLATION_ARMS = {
    "rcsd-random-rubric": "random",
    "rcsd-generic-rubric": "generic",
    "rcsd-noisy-rubric": "noisy",
    "rcsd-reduced-rubric": "reduced",
    "rcsd-ground-truth-rubric": "ground_truth",
}


def test_compare_has_an_arm_per_rubric_ablation() -> None:
    arms = _compare_arms()
    rcsd = arms["rcsd"].model_dump(exclude={"output_dir"})
    assert rcsd["teacher"]["rubric_source"] == "generated"
    for name, source in ABLATION_ARMS.items():
        arm = arms[name].model_dump(exclude={"output_dir"})
        assert arm["teacher"].pop("rubric_source") == source
        assert {**arm, "teacher": {**arm["teacher"], "rubric_source": "generated"}} == rcsd, name
