"""The rubric judge: RaR's explicit aggregation on verdicts a fake judge controls, its cache, its prompt,
and GRPO's reward on free-form questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcsd.client.prompts import judge_prompt_text
from rcsd.trainer.config import JudgeConfig
from rcsd.trainer.data.questions import Question
from rcsd.trainer.judge import (
    CATEGORY_WEIGHTS,
    RubricJudge,
    judged_reward,
    parse_verdict,
    rubric_score,
)
from tests.trainer.fake_judge import fake_judge

RUBRIC = [
    {"title": "Names Newton's second law", "description": "States F = ma.", "weight": 5},
    {"title": "Finds the acceleration", "description": "Gets a = 2 m/s^2.", "weight": 4},
    {"title": "Gives units", "description": "Writes the unit m/s^2.", "weight": 1},
    {"title": "Confuses mass and weight", "description": "Uses 9.8 kg as a mass.", "weight": -2},
]
QUESTION = Question.model_validate(
    {"id": "ff-0", "source": "test", "subject": "physics", "answer_type": "free_form",
     "question": "A 3 kg cart is pushed with 6 N. What is its acceleration?",
     "answer": "a = F/m = 2 m/s^2", "rubric": RUBRIC}
)  # fmt: skip


def test_rubric_score_is_rar_explicit_aggregation_with_pitfalls_subtracting():
    weights = [5.0, 4.0, 1.0, -2.0]
    assert rubric_score(weights, [True, True, True, False]) == 1.0
    assert rubric_score(weights, [True, False, True, False]) == pytest.approx(6 / 10)
    assert rubric_score(weights, [True, True, False, True]) == pytest.approx((9 - 2) / 10)
    assert rubric_score(weights, [False, False, True, True]) == 0.0  # clipped at 0
    assert rubric_score([-1.0], [False]) == 0.0


def test_parse_verdict():
    assert parse_verdict('{"satisfied": true, "reason": "x"}') is True
    assert parse_verdict('{"satisfied":false}') is False
    assert parse_verdict("<think>maybe yes</think> Satisfied: NO") is False
    assert parse_verdict("Yes.") is True
    assert parse_verdict("I cannot tell.") is None


def test_prompt_renders_the_criterion_and_the_pitfall_note():
    text = judge_prompt_text("Q?", "R.", "Gives units", "Writes the unit.", pitfall=False)
    assert "## Criterion: Gives units" in text and "MISTAKE" not in text and '"satisfied"' in text
    assert "MISTAKE" in judge_prompt_text("Q?", "R.", "Confuses", "Uses kg.", pitfall=True)


def test_scores_cache_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    with fake_judge({"Names Newton's second law", "Gives units", "Confuses mass and weight"}) as fake:
        config = JudgeConfig(url=fake.url, model="judge-m", api_key_env="JUDGE_KEY", cache_dir=str(tmp_path))
        judge = RubricJudge(config)
        answer = "<think>F = ma</think>F = ma, so a = 2 m/s^2 with 9.8 kg."
        graded = judge.score(QUESTION, answer)
        assert graded.score == pytest.approx((5 + 1 - 2) / 10)
        assert [v.satisfied for v in graded.verdicts] == [True, False, True, True]
        assert judge.calls == 4 and len(fake.requests) == 4
        assert all(h["Authorization"] == "Bearer sk-test" for h in fake.headers)
        assert {r["model"] for r in fake.requests} == {"judge-m"}
        assert all(
            "<think>" not in r["messages"][0]["content"] for r in fake.requests
        )  # the final answer only
        # the same answer again, from a new judge on the same cache: no calls
        again = RubricJudge(config)
        assert again.score(QUESTION, answer).score == graded.score and again.calls == 0
        assert all(v.cached for v in again.score(QUESTION, answer).verdicts)
        # another prompt version or judge model is another key
        other = RubricJudge(config.model_copy(update={"model": "judge-2"}))
        other.score(QUESTION, answer)
        assert other.calls == 4
        # an unclosed think block has no final answer: 0, no call
        assert judge.score(QUESTION, "<think>F = ma ...").score == 0.0 and judge.calls == 4
        assert len(fake.requests) == 8


def test_categories_and_grpo_reward(tmp_path: Path):
    rubric = [{"description": "States F = ma.", "category": "Essential", "title": "law"},
              {"description": "Gets 2 m/s^2.", "category": "Important", "title": "value"},
              {"description": "Forgets units.", "category": "Pitfall", "title": "units"}]  # fmt: skip
    question = QUESTION.model_copy(update={"rubric": [QUESTION.rubric[0].model_validate(r) for r in rubric]})
    with fake_judge({"law", "units"}) as fake:
        judge = RubricJudge(JudgeConfig(url=fake.url + "/v1", model="m", cache_dir=str(tmp_path)))
        expected = (CATEGORY_WEIGHTS["Essential"] + CATEGORY_WEIGHTS["Pitfall"]) / (
            CATEGORY_WEIGHTS["Essential"] + CATEGORY_WEIGHTS["Important"]
        )
        assert judged_reward(judge, "F = ma", question) == pytest.approx(expected)
    numeric = Question.model_validate(
        {
            "id": "n",
            "source": "t",
            "subject": "p",
            "answer_type": "numeric",
            "question": "2+2?",
            "answer": "4",
        }
    )
    assert judged_reward(None, "\\boxed{4}", numeric) == 1.0  # no judge needed: the answer check
    assert judged_reward(None, "F = ma", question) == 0.0  # free-form without a judge: unverifiable


def test_free_form_questions_need_a_rubric():
    with pytest.raises(ValueError, match="rubric"):
        Question.model_validate(QUESTION.model_dump() | {"rubric": None})
