"""Rubric grading of free-form answers by a judge model: `rcsd eval`'s score and GRPO's reward.

A judge checks each criterion of a question's rubric against the final answer (the text after the last
`</think>`; an unclosed think block scores 0 without a call), one chat completion per criterion, from
any OpenAI-compatible endpoint (`POST <url>/v1/chat/completions`: a stock `vllm serve`, or a hosted API
with its key in the environment variable `api_key_env`). The prompt is the versioned template
`rcsd.client.prompts` `rubric_judge/<prompt_version>.j2`.

Score, Rubrics as Rewards' explicit aggregation (Gunjal et al. 2025, arXiv:2507.17746, Eq. 1:
r = sum_j w_j c_j / sum_j w_j) with pitfalls subtracting:

    score = clip( sum_j w_j * c_j  /  sum_{j: w_j > 0} w_j , 0, 1 )

c_j = 1 when the judge says the answer meets criterion j, or for a pitfall (w_j < 0) makes the mistake
it names. The normaliser is the positive weights only, so an answer meeting every criterion and no
pitfall scores exactly 1 (with RaR's sum over all weights, negative pitfall weights would shrink the
denominator and let a perfect answer score above 1); the clip keeps pitfall-heavy answers at 0, as
HealthBench does. Weights are RaR-Science's integers (Essential 5, Important 3-4, Optional 1-2,
Pitfall -1 to -2, per the dataset's rubric-generation convention); a criterion with only a category gets
the middle of its range: `CATEGORY_WEIGHTS`.

Verdicts are cached on disk (sqlite in `cache_dir`) by (judge model, prompt version, question, answer,
criterion): a rerun, or a GRPO group with a repeated answer, makes no second call.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from rcsd.client.prompts import judge_prompt_text
from rcsd.trainer.answers import final_text, reward
from rcsd.trainer.config import JudgeConfig
from rcsd.trainer.data.questions import Question, RubricItem

CATEGORY_WEIGHTS = {"Essential": 5.0, "Important": 3.5, "Optional": 1.5, "Pitfall": -1.5}
CACHE_FILE = "judge_cache.sqlite"


@dataclass(frozen=True)
class Verdict:
    title: str
    description: str
    weight: float
    satisfied: bool
    parsed: bool  # False: the judge's reply held no verdict (counted as not satisfied)
    reply: str
    cached: bool


@dataclass(frozen=True)
class RubricScore:
    score: float
    verdicts: list[Verdict]

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "verdicts": [asdict(v) for v in self.verdicts]}


def item_weight(item: RubricItem) -> float:
    """The criterion's signed weight: its own, else its category's."""
    if item.weight is not None:
        return float(item.weight)
    assert item.category is not None
    return CATEGORY_WEIGHTS[item.category]


def rubric_score(weights: list[float], satisfied: list[bool]) -> float:
    """RaR's explicit aggregation, pitfalls subtracting, normalised by the positive weights, in [0, 1]."""
    total = sum(w for w in weights if w > 0)
    if total == 0:
        return 0.0
    earned = sum(w for w, hit in zip(weights, satisfied, strict=True) if hit)
    return min(1.0, max(0.0, earned / total))


_VERDICT = re.compile(r'"?satisfied"?\s*[:=]\s*"?(true|false|yes|no)', re.IGNORECASE)
_BARE = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """The judge's verdict: `"satisfied": true/false` (the template's format), else the last bare
    true/false/yes/no; None when there is none."""
    found = _VERDICT.findall(reply) or _BARE.findall(reply)
    return None if not found else found[-1].lower() in ("true", "yes")


class RubricJudge:
    """Scores free-form answers against rubrics with a judge endpoint, caching every verdict on disk."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        root = config.url.rstrip("/")
        self.endpoint = root + ("/chat/completions" if root.endswith("/v1") else "/v1/chat/completions")
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(headers=headers, timeout=config.timeout_s)
        Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(Path(config.cache_dir) / CACHE_FILE, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._lock = threading.Lock()
        self.calls = 0  # judge requests made by this object (cache misses)

    def score(self, question: Question, text: str) -> RubricScore:
        """The rubric score of the final answer in `text` (0, no calls, when thinking never closed)."""
        assert question.rubric, f"{question.id}: no rubric to judge against"
        answer = final_text(text)
        if answer is None:
            return RubricScore(0.0, [])
        items = question.rubric
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(items))) as pool:
            verdicts = list(pool.map(lambda item: self._verdict(question, answer.strip(), item), items))
        score = rubric_score([v.weight for v in verdicts], [v.satisfied for v in verdicts])
        return RubricScore(score, verdicts)

    def _verdict(self, question: Question, answer: str, item: RubricItem) -> Verdict:
        weight = item_weight(item)
        key = self._key(question.question, answer, item)
        with self._lock:
            row = self._db.execute("SELECT reply FROM verdicts WHERE key = ?", (key,)).fetchone()
        cached = row is not None
        reply = row[0] if cached else self._ask(question.question, answer, item, weight < 0)
        if not cached:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, reply))
                self._db.commit()
        verdict = parse_verdict(reply)
        return Verdict(
            item.title, item.description, weight, bool(verdict), verdict is not None, reply, cached
        )

    def _key(self, question: str, answer: str, item: RubricItem) -> str:
        parts = [self.config.model, self.config.prompt_version, question, answer, item.model_dump_json()]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _ask(self, question: str, answer: str, item: RubricItem, pitfall: bool) -> str:
        prompt = judge_prompt_text(
            question, answer, item.title, item.description, pitfall, self.config.prompt_version
        )
        body = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        response = self.http.post(self.endpoint, json=body)
        response.raise_for_status()
        with self._lock:
            self.calls += 1
        return str(response.json()["choices"][0]["message"]["content"] or "")

    def close(self) -> None:
        self.http.close()
        self._db.close()


def judged_reward(judge: RubricJudge | None, text: str, question: Question) -> float:
    """GRPO's reward: the rubric score for a free-form question (with a judge), else the answer check."""
    if question.answer_type == "free_form" and judge is not None:
        return judge.score(question, text).score
    return reward(text, question)


_JUDGES: dict[str, RubricJudge] = {}


def judge_for(config: JudgeConfig | None) -> RubricJudge | None:
    """One judge per judge config for the life of the process (the training loop asks every step)."""
    if config is None:
        return None
    key = config.model_dump_json()
    if key not in _JUDGES:
        _JUDGES[key] = RubricJudge(config)
    return _JUDGES[key]
