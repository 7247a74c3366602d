"""The trainer config: shipped YAML files load, dotted overrides apply, mistakes fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rcsd.trainer.config import TrainConfig, load_config, shipped_config


@pytest.mark.parametrize("name", ["smollm2_cpu.yaml", "qwen3_8b_gpu.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(name)
    assert config.method == "rcsd" and config.loss.name == "topk_fkl"
    assert shipped_config(name).is_file()


def test_the_released_recipe() -> None:
    config = load_config("qwen3_8b_gpu.yaml")
    assert config.model == "Qwen/Qwen3-8B" and config.lora.enabled
    assert (config.lr, config.prompts_per_step, config.rollouts_per_prompt) == (5e-6, 32, 1)
    assert config.sampling.max_new_tokens == 4096
    assert (config.sampling.temperature, config.sampling.top_p, config.sampling.top_k) == (1.2, 0.95, 20)
    assert (config.loss.tau, config.loss.clip) == (1.2, 0.05)
    assert (config.teacher.context_mode, config.teacher.top_k) == ("rubric+reference", 20)
    # reason-first, the released prompts, thinking on everywhere (docs/fidelity.md)
    assert (config.teacher.reason_first, config.teacher.analysis_max_tokens) == (True, 4096)
    assert config.sampling.prompt_version == "release" and config.sampling.enable_thinking
    assert config.teacher.thinking and config.teacher.analysis_thinking


def test_dotted_overrides_take_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("method: rcsd\nsteps: 3\nlora:\n  r: 4\n")
    config = load_config(
        path,
        [
            "steps=7",
            "lora.enabled=false",
            "teacher.top_k=8",
            "services.teacher_urls=[http://a:1,http://b:2]",
            "teacher.rationale=auto",
        ],
    )
    assert config.steps == 7 and config.lora.r == 4 and config.lora.enabled is False
    assert config.teacher.top_k == 8 and config.teacher.rationale == "auto"
    assert config.services.teacher_urls == ["http://a:1", "http://b:2"]
    # what a run saves loads back to the same config
    saved = tmp_path / "saved.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


@pytest.mark.parametrize(
    "overrides",
    [
        ["stepz=3"],  # unknown key
        ["teacher.top_kk=3"],
        ["method=opsd"],  # OPSD means context_mode=reference, said explicitly
        ["method=grpo"],  # GRPO needs a group
        ["loss.name=nope"],
    ],
)
def test_mistakes_fail_loudly(tmp_path: Path, overrides: list[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("steps: 1\n")
    with pytest.raises(ValidationError):
        load_config(path, overrides)


def test_methods_that_need_no_rubric() -> None:
    assert TrainConfig().needs_rubrics
    assert not TrainConfig(method="opsd", teacher={"context_mode": "reference"}).needs_rubrics
    assert not TrainConfig(method="grpo", rollouts_per_prompt=4).needs_rubrics
    with pytest.raises(ValueError, match="key=value"):
        load_config(shipped_config("smollm2_cpu.yaml"), ["steps"])
