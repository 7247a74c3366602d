"""`rcsd demo` end to end on the tiny model: real service processes (hf), a real rubric store, twice.

The first run generates and stores the rubrics; the second, with the same cache dir, must get them
back `cached: true`. The teacher's `none` score is checked against an independent computation: the
student's own log-probs of the answer it sampled, computed in the demo process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rcsd.client.protocol import CONTEXT_MODES
from rcsd.services.demo.run import main

# The random tiny model only needs room for 2 criteria; its 4096 positions also bound the prompt.
DEMO_ARGS = [
    "--backend",
    "hf",
    "--dtype",
    "float32",
    "--max-new-tokens",
    "16",
    "--min-criteria",
    "2",
    "--max-criteria",
    "2",
    "--rubric-max-tokens",
    "1100",
]


CROSS_RUN_TOLERANCE = 2e-3  # mean teacher log-prob of one answer, between two demo processes


def _run(model_dir: Path, run_dir: Path, cache_dir: Path) -> tuple[dict, str]:
    argv = [*DEMO_ARGS, "--model", str(model_dir), "--run-dir", str(run_dir), "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    md_path, json_path = run_dir / "summary.md", run_dir / "summary.json"
    assert md_path.is_file() and json_path.is_file()
    assert any(run_dir.glob("teacher-*.log")) and any(run_dir.glob("rubric-*.log"))
    return json.loads(json_path.read_text()), md_path.read_text()


def _section(markdown: str, question_id: str) -> str:
    """The per-question part of summary.md, from its `## i. <id>` heading to the next."""
    [section] = [
        part for part in markdown.split("\n## ")[1:] if part.split("\n", 1)[0].split()[1] == question_id
    ]
    return section


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, dict, str]:
    cache_dir = tmp_path_factory.mktemp("demo-cache")
    first, first_md = _run(tiny_model_dir, tmp_path_factory.mktemp("run1"), cache_dir)
    second, second_md = _run(tiny_model_dir, tmp_path_factory.mktemp("run2"), cache_dir)
    return first, first_md, second, second_md


def test_every_mode_for_every_question_with_a_rubric(two_runs: tuple[dict, str, dict, str]) -> None:
    first, first_md, _, _ = two_runs
    assert first["backend"] == "hf"
    assert {s["backend"] for s in first["services"].values()} == {"hf"}
    assert all("stopped cleanly" in s["exit"] for s in first["services"].values())
    assert len(first["questions"]) == 5
    with_rubric = [q for q in first["questions"] if q["rubric"]["error"] is None]
    assert with_rubric, "the tiny model should manage a 2-criterion rubric"
    for q in first["questions"]:
        if q["rubric"]["error"] is None:
            assert len(q["rubric"]["criteria"]) == 2 and q["rubric"]["cached"] is False
            assert set(q["teacher_mean_logprob"]) == set(CONTEXT_MODES)
        else:  # shown, not fatal: the modes that need a rubric are skipped
            assert set(q["teacher_mean_logprob"]) == {"reference", "none"}
            assert set(q["skipped_modes"]) == {"rubric", "rubric+reference"}
        assert q["answer_token_ids"] and q["none_context_matches_student_prompt"] is True
        assert q["teacher_mean_logprob"]["none"] == pytest.approx(q["student_mean_logprob"], abs=1e-4)
        section = _section(first_md, q["id"])
        for mode in CONTEXT_MODES:
            value = q["teacher_mean_logprob"].get(mode)
            assert f"| {mode} | {value:.3f} |" in section if value is not None else "skipped" in section
    assert "| context mode | Q1 | Q2 | Q3 | Q4 | Q5 |" in first_md


def test_second_run_gets_the_stored_rubrics(two_runs: tuple[dict, str, dict, str]) -> None:
    first, _, second, second_md = two_runs
    for q1, q2 in zip(first["questions"], second["questions"], strict=True):
        if q1["rubric"]["error"] is not None:
            continue
        assert q2["rubric"]["cached"] is True and q2["rubric"]["attempts"] == 0
        assert q2["rubric"]["rubric_id"] == q1["rubric"]["rubric_id"]
        assert q2["rubric"]["criteria"] == q1["rubric"]["criteria"]
        # The same seed samples the same answer, and the teacher scores it alike, not bit for bit:
        # another process may block its GEMMs differently, and the random tiny model's large weights
        # amplify the rounding (5e-4 seen once). Exactness is checked within each run, above.
        assert q2["answer_token_ids"] == q1["answer_token_ids"]
        for mode in CONTEXT_MODES:
            assert q2["teacher_mean_logprob"][mode] == pytest.approx(
                q1["teacher_mean_logprob"][mode], abs=CROSS_RUN_TOLERANCE
            )
    assert "cached: true" in second_md


def test_a_refused_rubric_is_shown_and_skipped(tiny_model_dir: Path, tmp_path: Path) -> None:
    """No prompt fits 4096 positions with 4096 new tokens: the service refuses (422), the demo goes on."""
    argv = [*DEMO_ARGS, "--rubric-max-tokens", "4096", "--questions", "1", "--model", str(tiny_model_dir)]
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]) == 0
    [q] = json.loads((tmp_path / "run" / "summary.json").read_text())["questions"]
    assert "422" in q["rubric"]["error"] and q["rubric"]["criteria"] == []
    assert set(q["teacher_mean_logprob"]) == {"reference", "none"}
    assert q["skipped_modes"] == {"rubric": "no rubric", "rubric+reference": "no rubric"}
    assert "| rubric | skipped (no rubric) |" in (tmp_path / "run" / "summary.md").read_text()
