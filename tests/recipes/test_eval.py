"""`rcsd eval` end to end on the tiny model, and its scoring on known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rcsd.recipes.cli import main as rcsd_main
from rcsd.recipes.evaluate import EvalSettings, evaluate_set, main
from rcsd.trainer.data.questions import Question
from rcsd.trainer.rollout import Rollout, SamplingParams

QUESTIONS = [
    {"id": "n-0", "source": "test", "subject": "physics", "answer_type": "numeric",
     "question": "A ball falls for 2 s from rest. How far does it fall?", "answer": "19.6", "unit": "m"},
    {"id": "m-0", "source": "test", "subject": "chemistry", "answer_type": "mcq",
     "question": "Which gas do plants take in?", "choices": ["Oxygen", "Carbon dioxide"], "answer": "B"},
    {"id": "n-1", "source": "test", "subject": "physics", "answer_type": "numeric",
     "question": "What is the kinetic energy of 2 kg at 3 m/s?", "answer": "9", "unit": "J"},
]  # fmt: skip


def test_rcsd_eval_end_to_end(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = tmp_path / "tiny_set.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "report.json"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "mmlu_physics_heldout", "--limit", "3",
            "--temperature", "0", "1.0", "--n", "2", "--max-new-tokens", "6", "--dtype", "float32",
            "--backend", "hf", "--out", str(out), "--no-progress"]  # fmt: skip
    assert rcsd_main(["eval", *argv]) == 0  # through the `rcsd` command's dispatch
    report = json.loads(out.read_text())
    rows = [(r["data"], r["temperature"], r["n"], r["questions"]) for r in report["results"]]
    assert rows == [
        ("tiny_set", 0.0, 1, 3),
        ("tiny_set", 1.0, 2, 3),
        ("mmlu_physics_heldout", 0.0, 1, 3),
        ("mmlu_physics_heldout", 1.0, 2, 3),
    ]
    for result in report["results"]:
        assert [len(q["samples"]) for q in result["per_question"]] == [result["n"]] * 3
        assert result["truncated"] == 1.0  # 6 tokens of a random model never reach the end of turn
        assert result["mean_completion_tokens"] == 6
        rights = [q["right"] / result["n"] for q in result["per_question"]]
        assert result["accuracy"] == pytest.approx(sum(rights) / 3)
        assert result["ci_low"] <= result["accuracy"] <= result["ci_high"] and result["accuracy_se"] >= 0
    assert report["settings"]["max_new_tokens"] == 6 and report["dtype"].startswith("float32")
    table = capsys.readouterr().out
    assert "tiny_set" in table and "mmlu_physics_heldout" in table and str(out) in table
    assert "avg@n ± SE [95% CI]" in table and " ± " in table
    assert main(argv) == 0  # seeded: the same answers again
    again = json.loads(out.read_text())
    assert [r["per_question"] for r in again["results"]] == [r["per_question"] for r in report["results"]]


class ScriptedEngine:
    """Answers each prompt with fixed texts: the scoring is checked on known answers."""

    def __init__(self, tokenizer, texts_by_question: list[list[str]]) -> None:
        self.tokenizer, self.texts, self.calls = tokenizer, texts_by_question, 0

    def sample(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> list[list[Rollout]]:
        groups = []
        for prompt in prompts:
            texts = self.texts[self.calls]
            self.calls += 1
            assert len(texts) == n
            groups.append([Rollout(prompt, self.tokenizer.encode(t), truncated=False) for t in texts])
        return groups

    def update(self, model: object) -> None: ...

    def close(self) -> None: ...


def test_scoring_greedy_and_pass_at_1(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = [Question.model_validate(q) for q in QUESTIONS]
    greedy = ScriptedEngine(tokenizer, [["so \\boxed{19.5} m"], ["The answer is (A)."], ["I do not know."]])
    result = evaluate_set(greedy, tokenizer, "t", questions, 0.0, EvalSettings(batch_size=2), progress=False)
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.no_answer == pytest.approx(1 / 3)
    sampled = ScriptedEngine(
        tokenizer,
        [["\\boxed{19.6}", "\\boxed{30}"], ["**B**", "Answer: B"], ["E = 9 J", "\\boxed{9.2}"]],
    )
    result = evaluate_set(sampled, tokenizer, "t", questions, 1.0, EvalSettings(n=2), progress=False)
    assert result.accuracy == pytest.approx((0.5 + 1 + 1) / 3)
    assert [q["right"] for q in result.per_question] == [1, 2, 2]


class RecordingEngine(ScriptedEngine):
    """A ScriptedEngine that keeps the prompts it was asked to answer."""

    def sample(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> list[list[Rollout]]:
        self.prompts = [*getattr(self, "prompts", []), *prompts]
        return super().sample(prompts, params, n)


def test_eval_asks_with_the_released_student_prompt_and_logs_progress_lines(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
):
    """The student is evaluated on the prompt it trained on (the release's, the training default), and a
    log (stderr not a terminal) gets the trainer's whole-line progress, not a carriage-return bar."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [question] = [Question.model_validate(QUESTIONS[0])]
    engine = RecordingEngine(tokenizer, [["\\boxed{19.6}"]])
    evaluate_set(engine, tokenizer, "t", [question], 0.0, EvalSettings(), progress=True)
    released = f"Question: {question.prompt_text}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    assert released in tokenizer.decode(engine.prompts[0])
    assert "t T=0: 1/1 answers" in capsys.readouterr().err
