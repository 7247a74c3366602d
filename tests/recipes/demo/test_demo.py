"""`rcsd demo` end to end on the tiny model: real service processes (hf), a real rubric store, real training.

The same path as `make demo`, shrunk by the demo's own `key=value` overrides. The first run generates
and stores the rubrics, evaluates, trains and reports; the second, with the same cache dir, gets every
stored rubric back `cached: true`. Cross-checks: training found each question's rubric in the store
(its per-step `rubric_fallbacks` count exactly the questions whose rubric failed), and the reported
accuracy is the share of right answers recorded per question.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from rcsd.recipes.demo.run import main

# The random tiny model only needs room for 2 criteria; its 4096 positions also bound the prompt.
TINY = [
    "--backend",
    "hf",
    "--dtype",
    "float32",
    "--eval-sets",
    "mmlu_physics_heldout",
    "--eval-questions",
    "2",
    "--eval-max-new-tokens",
    "8",
    "steps=2",
    "prompts_per_step=2",
    "sampling.max_new_tokens=8",
    "teacher.top_k=8",
    "lora.r=4",
    "lr=1e-2",
    "probe.questions=2",
    "probe.max_new_tokens=4",
    "rubric.min_criteria=2",
    "rubric.max_criteria=2",
]
RUBRIC_TOKENS = "rubric.max_tokens=1100"
PHASES = {"start services", "rubrics", "eval before", "train", "stop services", "eval after"}


def _run(model_dir: Path, run_dir: Path, cache_dir: Path, *extra: str) -> tuple[dict, str]:
    argv = [
        *TINY,
        *extra,
        "--model",
        str(model_dir),
        "--run-dir",
        str(run_dir),
        "--cache-dir",
        str(cache_dir),
    ]
    assert main(argv) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, (run_dir / "report.md").read_text()


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, dict]:
    cache_dir = tmp_path_factory.mktemp("demo-cache")
    first, first_md = _run(tiny_model_dir, tmp_path_factory.mktemp("run1"), cache_dir, RUBRIC_TOKENS)
    second, _ = _run(tiny_model_dir, tmp_path_factory.mktemp("run2"), cache_dir, RUBRIC_TOKENS)
    return first, first_md, second


def test_one_run_does_the_whole_method(two_runs: tuple[dict, str, dict]) -> None:
    first, report, _ = two_runs
    assert all("stopped cleanly" in s["exit"] for s in first["services"].values())
    assert set(first["phases_s"]) == PHASES and first["total_s"] > 0

    rubrics = first["rubrics"]
    assert len(rubrics) == 2 * 2 + 2  # every training question, then every probe question
    made = [o for o in rubrics if o["error"] is None]
    assert made, "the tiny model should manage a 2-criterion rubric"
    assert all(len(o["criteria"]) == 2 and o["cached"] is False for o in made)

    steps = first["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["rollout_tokens"] > 0 and "kl_sampled" in s for s in steps)
    failed_in_training = sum(o["error"] is not None for o in rubrics[:4])
    assert sum(s["rubric_fallbacks"] for s in steps) == failed_in_training
    assert set(first["probe"]) == {"before", "after"} and "topk_kl" in first["probe"]["after"]

    train_dir = Path(first["config"]["output_dir"])
    assert (train_dir / "metrics.jsonl").is_file() and (train_dir / "plots" / "loss.png").is_file()
    # the release's reason-first teacher: one analysis per training question, sampled every step
    assert first["config"]["teacher"]["reason_first"] is True
    assert all(s["analysis_len_mean"] > 0 for s in steps)
    recorded = [json.loads(line) for line in (train_dir / "analyses.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in recorded}) == [1, 2] and len(recorded) == 4
    for label in ("eval_before", "eval_after"):
        [result] = first[label]["sets"]
        assert result["questions"] == 2
        right = sum(q["right"] for q in result["per_question"])
        assert first[label]["accuracy"] == pytest.approx(right / 2)
    for heading in (
        "## What ran",
        "## Accuracy on held-out",
        "## Teacher-student divergence",
        "## Time per phase",
    ):
        assert heading in report
    assert "![loss](train/plots/loss.png)" in report
    # the probe's change with its paired standard error over the probe's questions, computed here anew
    before, after = first["probe"]["before"], first["probe"]["after"]
    pairs = zip(
        before["reference_logprob_per_question"], after["reference_logprob_per_question"], strict=True
    )
    diffs = [a - b for b, a in pairs]
    assert f"± {statistics.stdev(diffs) / math.sqrt(2):.4f} (SE over 2 questions)" in report
    se = statistics.stdev(q["right"] for q in first["eval_before"]["sets"][0]["per_question"]) / math.sqrt(2)
    assert f"{100 * first['eval_before']['accuracy']:.1f} % ± {100 * se:.1f}" in report


def test_second_run_gets_the_stored_rubrics(two_runs: tuple[dict, str, dict]) -> None:
    first, _, second = two_runs
    for one, two in zip(first["rubrics"], second["rubrics"], strict=True):
        if one["error"] is None:
            assert two["cached"] is True and two["attempts"] == 0
            assert (two["rubric_id"], two["criteria"]) == (one["rubric_id"], one["criteria"])


def test_a_refused_rubric_falls_back_to_the_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    """No prompt fits 4096 positions with 4096 new tokens: each item is refused alone (422), and the
    training scores those questions with the reference-only context instead of stopping."""
    refused = ["rubric.max_tokens=4096", "steps=1", "probe.data=[]", "--eval-questions", "1"]
    summary, report = _run(tiny_model_dir, tmp_path / "run", tmp_path / "cache", *refused)
    assert len(summary["rubrics"]) == 2
    assert all("422" in o["error"] and o["criteria"] == [] for o in summary["rubrics"])
    assert [s["rubric_fallbacks"] for s in summary["steps"]] == [2]
    assert "2 failed" in report
