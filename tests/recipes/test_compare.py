"""`rcsd compare` end to end on the tiny model: services started by the command, every arm trained and
evaluated, the report built from each arm's own run, equal budgets, and a resume that retrains nothing.

- every trained arm ends with its own weights (its saved adapter differs from every other arm's), and the
  base arm's answers are those of `rcsd eval` on the untrained model;
- every arm sampled exactly the configured budget: 2 steps x 2 answers x 4 tokens (the tiny random model
  never ends an answer within 4 tokens), GRPO as 1 question x G=2;
- report.md (table, curves, configs), curves.png, results.json and each arm's config exist;
- a second run skips every arm and starts no service; an arm stopped after its step-1 checkpoint is
  continued from it (no services: GRPO needs none) and ends with the weights of the uninterrupted run;
  a changed config is refused instead of mixed with the old arms.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rcsd.recipes.cli import main as rcsd_main
from rcsd.recipes.compare.cli import main as compare_main
from rcsd.recipes.compare.config import CompareConfig, load_compare_config
from rcsd.recipes.evaluate import main as eval_main
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import load_config

STEPS, ANSWERS, TOKENS = 2, 2, 4
ARMS = ["base", "rcsd", "opsd", "grpo", "rcsd-sampled-rkl"]


def _compare_yaml(tiny_model_dir: Path, questions_file: Path, out: Path, path: Path) -> Path:
    config = {
        "name": "tiny",
        "smoke_test": True,
        "output_dir": str(out),
        "rollouts_per_step": ANSWERS,
        "grpo_group_size": 2,
        "train": {
            "model": str(tiny_model_dir),
            "dtype": "float32",
            "device": "cpu",
            "lora": {"r": 4, "alpha": 8},
            "lr": 1e-2,  # large, so that two steps move the tiny model's weights visibly
            "steps": STEPS,
            "checkpoint_every": 1,
            "sampling": {"max_new_tokens": TOKENS},
            "teacher": {"top_k": 8},
            "rubric": {"min_criteria": 1, "max_criteria": 2, "max_tokens": 300, "on_failure": "reference"},
            "services": {"deadline_s": 60},
            "data": [str(questions_file)],
            "progress": False,
            "plots": False,
        },
        "arms": [
            {"name": "base", "method": "base"},
            {"name": "rcsd", "method": "rcsd"},
            {"name": "opsd", "method": "opsd"},
            {"name": "grpo", "method": "grpo"},
            {"name": "rcsd-sampled-rkl", "method": "rcsd", "overrides": {"loss": {"name": "sampled_rkl"}}},
        ],
        "eval": {"data": [str(questions_file)], "limit": 2, "max_new_tokens": 4, "batch_size": 4},
        "services": {
            "launch": True,
            "backend": "hf",
            "dtype": "float32",
            "teacher_args": ["--max-top-k", "32"],
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _adapter(out: Path, arm: str, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(ckpt.checkpoint_dir(out / "arms" / arm, step) / "adapter" / "adapter_model.safetensors")


def _service_logs(out: Path) -> list[Path]:
    return sorted((out / "services").glob("*.log"))


def test_compare_end_to_end_and_resume(tiny_model_dir, questions_file, tmp_path):
    out = tmp_path / "compare"
    config_path = _compare_yaml(tiny_model_dir, questions_file, out, tmp_path / "compare.yaml")
    assert rcsd_main(["compare", str(config_path)]) == 0  # through the `rcsd` command's dispatch

    rows = {row["arm"]: row for row in json.loads((out / "results.json").read_text())}
    assert list(rows) == ARMS
    for arm, row in rows.items():
        trained = arm != "base"
        assert row["budget_held"], arm
        assert row["steps"] == (STEPS if trained else 0)
        assert row["answers_sampled"] == (STEPS * ANSWERS if trained else 0)
        assert row["tokens_sampled"] == (STEPS * ANSWERS * TOKENS if trained else 0)
        assert (row["teacher_tokens"] > 0) == (arm not in ("base", "grpo")), arm
    grpo = load_config(out / "configs" / "grpo.yaml")
    assert (grpo.prompts_per_step, grpo.rollouts_per_prompt) == (1, 2)

    # each row from its own run: different weights, each evaluated from its own folder
    adapters = {arm: _adapter(out, arm) for arm in ARMS[1:]}
    for a, b in itertools.combinations(adapters, 2):
        assert any(not torch.equal(adapters[a][k], adapters[b][k]) for k in adapters[a]), (a, b)
    for arm in ARMS[1:]:
        evaluation = json.loads((out / "arms" / arm / "eval.json").read_text())
        assert evaluation["adapter"] == str(ckpt.checkpoint_dir(out / "arms" / arm, STEPS) / "adapter")
        assert load_config(out / "configs" / f"{arm}.yaml") == load_config(out / "arms" / arm / "config.yaml")
    untrained = tmp_path / "untrained.json"
    eval_main(["--model", str(tiny_model_dir), "--data", str(questions_file), "--limit", "2",
               "--max-new-tokens", "4", "--batch-size", "4", "--n", "4", "--dtype", "float32",
               "--device", "cpu", "--backend", "hf", "--out", str(untrained), "--no-progress",
               "--template-version", "release"])  # fmt: skip  # the arms' prompt (sampling.prompt_version)
    base = json.loads((out / "arms" / "base" / "eval.json").read_text())
    assert base["adapter"] is None
    assert [r["per_question"] for r in base["results"]] == [
        r["per_question"] for r in json.loads(untrained.read_text())["results"]
    ]

    report = (out / "report.md").read_text()
    assert "Smoke test" in report and "![per-step curves" in report
    assert "| method | questions (greedy) | steps | answers sampled | tokens sampled |" in report
    assert all(f"| {arm} |" in report for arm in ARMS) and "held for every arm" in report
    assert "avg@n ± standard error [bootstrap 95 % interval]" in report and "95 % interval vs base" in report
    assert (
        "| reference |" in report
        and report.count("overlaps on every set") + report.count("separate:") == len(ARMS) - 1
    )
    assert report.count("```yaml") == 1 + len(ARMS)  # the comparison, then every arm
    assert (out / "curves.png").stat().st_size > 0

    # a second run: every arm finished, nothing retrained or re-evaluated, no service started
    logs = _service_logs(out)
    evaluated = {arm: (out / "arms" / arm / "eval.json").stat().st_mtime_ns for arm in ARMS}
    assert compare_main([str(config_path)]) == 0
    assert _service_logs(out) == logs
    assert {arm: (out / "arms" / arm / "eval.json").stat().st_mtime_ns for arm in ARMS} == evaluated

    # GRPO stopped after its step-1 checkpoint: continued from it, to the same weights
    grpo_dir = out / "arms" / "grpo"
    shutil.rmtree(ckpt.checkpoint_dir(grpo_dir, STEPS))
    (grpo_dir / "DONE").unlink()
    assert compare_main([str(config_path)]) == 0
    assert _service_logs(out) == logs  # GRPO needs neither service
    resumed = _adapter(out, "grpo")
    for name, tensor in adapters["grpo"].items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    del evaluated["grpo"]
    assert {arm: (out / "arms" / arm / "eval.json").stat().st_mtime_ns for arm in evaluated} == evaluated

    with pytest.raises(FileExistsError, match="another config"):
        compare_main([str(config_path), "train.lr=0.02"])


def test_arms_share_the_budget_and_the_start():
    """Both shipped configs load; every arm samples the same answers per step from the same start."""
    for name in ("compare_smollm2_cpu.yaml", "compare_qwen3_8b_gpu.yaml"):
        config = load_compare_config(name)
        trained = [c for a in config.arms if (c := config.arm_config(a, Path("."))) is not None]
        assert {c.prompts_per_step * c.rollouts_per_prompt for c in trained} == {config.rollouts_per_step}
        assert (
            len({(c.model, c.seed, c.steps, tuple(c.data), c.sampling.model_dump_json()) for c in trained})
            == 1
        )
        assert {c.method for c in trained} >= {"rcsd", "opsd", "grpo"}
    gpu = load_compare_config("compare_qwen3_8b_gpu.yaml")
    rcsd = gpu.arm_config(gpu.arms[1], Path("."))
    assert rcsd is not None and rcsd.model == "Qwen/Qwen3-8B" and rcsd.lr == 5e-6
    assert (rcsd.prompts_per_step, rcsd.rollouts_per_prompt, rcsd.sampling.max_new_tokens) == (32, 1, 4096)
    assert (rcsd.loss.tau, rcsd.teacher.top_k, rcsd.loss.clip) == (1.2, 20, 0.05)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grpo_group_size": 3}, "not a multiple"),
        ({"arms": [{"name": "rcsd", "method": "rcsd", "overrides": {"steps": 3}}]}, "every arm must share"),
        ({"train": {"method": "grpo"}}, "set by the comparison"),
        ({"arms": [{"name": "a", "method": "base"}, {"name": "a", "method": "rcsd"}]}, "unique"),
    ],
)
def test_an_unfair_comparison_is_refused(change, message):
    raw = {
        "name": "x",
        "rollouts_per_step": 4,
        "arms": [{"name": "grpo", "method": "grpo"}],
        "eval": {"data": ["scibench_heldout"]},
    }
    with pytest.raises(ValueError, match=message):
        CompareConfig.model_validate({**raw, **change})


def test_the_comparison_library_imports_nothing_of_the_services():
    """Only `launch_services` (the command layer) imports rcsd.services, and only when it is called."""
    code = (
        "import sys, rcsd.recipes.compare.run, rcsd.recipes.compare.report, rcsd.recipes.compare.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('rcsd.services'))\n"
        "assert not loaded, loaded"
    )
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
