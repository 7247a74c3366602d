"""`rcsd eval` on free-form questions graded against rubrics, the whole path on the tiny model: a fake
judge whose verdicts the test controls (the score arithmetic, exactly, and the cache), a real stock
vLLM server of the tiny model as the judge (its verdicts are noise: the plumbing and the cache), and the
evaluation itself answered by a vLLM server that `rcsd eval --backend vllm` starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcsd.recipes.evaluate import main as eval_main
from rcsd.recipes.launch import free_port, wait_until_ok
from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env
from rcsd.trainer.answers import final_text
from tests.trainer.fake_judge import fake_judge

RUBRIC = [
    {"title": "Names the law", "description": "States that F = ma.", "weight": 5},
    {"title": "Gets the value", "description": "Finds a = 2 m/s^2.", "weight": 3},
    {"title": "Optional context", "description": "Mentions friction is ignored.", "category": "Optional"},
    {"title": "Mass for weight", "description": "Treats 9.8 as a mass.", "weight": -2},
]
FREE_FORM = [
    {"id": "ff-0", "source": "test", "subject": "physics", "answer_type": "free_form",
     "question": "A 3 kg cart is pushed with 6 N. What is its acceleration?", "answer": "2 m/s^2",
     "rubric": RUBRIC},
    {"id": "ff-1", "source": "test", "subject": "physics", "answer_type": "free_form",
     "question": "Why does a ball thrown up come back down?", "answer": "Gravity decelerates it.",
     "rubric": RUBRIC[:2]},
]  # fmt: skip
SATISFIED = {"Names the law", "Optional context", "Mass for weight"}


def _expected_score(rubric: list[dict], text: str) -> float:
    """The score by hand: RaR's weighted share, pitfalls subtracting, over the positive weights."""
    if final_text(text) is None:
        return 0.0
    weights = {"Optional": 1.5}
    signed = [(r.get("weight", weights.get(r.get("category", ""))), r["title"] in SATISFIED) for r in rubric]
    earned = sum(w for w, hit in signed if hit)
    return max(0.0, min(1.0, earned / sum(w for w, _ in signed if w > 0)))


@pytest.fixture
def free_form_file(tmp_path: Path) -> Path:
    path = tmp_path / "rar_tiny.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in FREE_FORM))
    return path


def _argv(model: Path, data: Path, out: Path, judge_url: str, judge_model: str, cache: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--temperature", "0", "1.0", "--n", "2",
            "--max-new-tokens", "8", "--dtype", "float32", "--device", "cpu", "--backend", "hf",
            "--judge-url", judge_url, "--judge-model", judge_model, "--judge-cache-dir", str(cache),
            "--out", str(out), "--no-progress"]  # fmt: skip


def test_judged_eval_score_arithmetic_and_cache(
    tiny_model_dir: Path, free_form_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out, cache = tmp_path / "eval.json", tmp_path / "judge-cache"
    with fake_judge(SATISFIED) as judge:
        assert eval_main(_argv(tiny_model_dir, free_form_file, out, judge.url, "fake", cache)) == 0
        report = json.loads(out.read_text())
        calls = len(judge.requests)
        for result in report["results"]:
            scores = []
            for question, spec in zip(result["per_question"], FREE_FORM, strict=True):
                for sample in question["samples"]:
                    assert sample["score"] == pytest.approx(_expected_score(spec["rubric"], sample["text"]))
                    if final_text(sample["text"]) is not None:
                        assert [v["title"] for v in sample["verdicts"]] == [
                            r["title"] for r in spec["rubric"]
                        ]
                        assert [v["satisfied"] for v in sample["verdicts"]] == [
                            r["title"] in SATISFIED for r in spec["rubric"]
                        ]
                scores.append(sum(s["score"] for s in question["samples"]) / result["n"])
            assert result["accuracy"] == pytest.approx(sum(scores) / len(scores))
            assert result["ci_low"] <= result["accuracy"] <= result["ci_high"]
        assert calls > 0
        table = capsys.readouterr().out
        assert " ± " in table and "rar_tiny" in table
        # the second run answers the same (seeded) and asks the judge nothing: every verdict is cached
        assert eval_main(_argv(tiny_model_dir, free_form_file, out, judge.url, "fake", cache)) == 0
        assert len(judge.requests) == calls
        again = json.loads(out.read_text())
        assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in report["results"]]
        verdicts = [v for r in again["results"] for q in r["per_question"] for s in q["samples"]
                    for v in s.get("verdicts", [])]  # fmt: skip
        assert verdicts and all(v["cached"] for v in verdicts)


def test_free_form_without_a_judge_is_refused(tiny_model_dir: Path, free_form_file: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="judge"):
        eval_main(["--model", str(tiny_model_dir), "--data", str(free_form_file), "--backend", "hf",
                   "--out", str(tmp_path / "x.json"), "--no-progress"])  # fmt: skip


@pytest.fixture(scope="module")
def vllm_judge(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stock `vllm serve` of the tiny model (vllm-cpu): an OpenAI-compatible judge."""
    log_path = tmp_path_factory.mktemp("vllm-judge") / "server.log"
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]  # fmt: skip
    env = {**vllm_cpu_env(), "VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/health", server, 300, lambda: log_path.read_text(errors="replace")[-3000:])
        yield url
    finally:
        server.terminate()
        server.wait(60)


@pytest.mark.vllm
def test_judged_eval_with_a_real_vllm_judge(
    tiny_model_dir: Path, free_form_file: Path, tmp_path: Path, vllm_judge: str
):
    out, cache = tmp_path / "eval.json", tmp_path / "judge-cache"
    argv = _argv(tiny_model_dir, free_form_file, out, vllm_judge, str(tiny_model_dir), cache)
    assert eval_main(argv) == 0
    report = json.loads(out.read_text())
    verdicts = [v for r in report["results"] for q in r["per_question"] for s in q["samples"]
                for v in s.get("verdicts", [])]  # fmt: skip
    assert verdicts and all(isinstance(v["reply"], str) and not v["cached"] for v in verdicts)
    for result in report["results"]:
        for question in result["per_question"]:
            assert all(0.0 <= s["score"] <= 1.0 for s in question["samples"])
    assert (cache / "judge_cache.sqlite").is_file()
    assert eval_main(argv) == 0  # the second run: every verdict from the cache
    again = json.loads(out.read_text())
    cached = [v for r in again["results"] for q in r["per_question"] for s in q["samples"]
              for v in s.get("verdicts", [])]  # fmt: skip
    assert len(cached) == len(verdicts) and all(v["cached"] for v in cached)
    assert [v["reply"] for v in cached] == [v["reply"] for v in verdicts]


@pytest.mark.vllm
def test_eval_on_a_vllm_server_it_starts_answers_as_hf_does(tiny_model_dir: Path, tmp_path: Path):
    """`--backend vllm`: the whole set in one submission to a server started for the run; greedy
    answers equal hf's (the same float32 weights)."""
    runs = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / f"{backend}.json"
        eval_main(["--model", str(tiny_model_dir), "--data", "mmlu_physics_heldout", "--limit", "4",
                   "--max-new-tokens", "6", "--dtype", "float32", "--device", "cpu", "--backend", backend,
                   "--out", str(out), "--no-progress"])  # fmt: skip
        runs[backend] = json.loads(out.read_text())["results"][0]["per_question"]
    assert [[s["text"] for s in q["samples"]] for q in runs["vllm"]] == [
        [s["text"] for s in q["samples"]] for q in runs["hf"]
    ]


@pytest.mark.vllm
def test_sampled_eval_on_vllm_survives_prompts_beyond_one_batch(tiny_model_dir: Path, tmp_path: Path):
    """Seeded samples whose prompts outgrow one engine step: vllm-cpu 0.32 dies on a seeded partial
    prefill, so the server `rcsd eval` starts must never split a prompt across steps."""
    out = tmp_path / "sampled.json"
    eval_main(["--model", str(tiny_model_dir), "--data", "scibench_heldout", "--limit", "32",
               "--temperature", "1.0", "--n", "8", "--max-new-tokens", "4", "--dtype", "float32",
               "--device", "cpu", "--backend", "vllm", "--out", str(out), "--no-progress"])  # fmt: skip
    (result,) = json.loads(out.read_text())["results"]
    assert [len(q["samples"]) for q in result["per_question"]] == [8] * 32
