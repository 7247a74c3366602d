"""Which rubric the teacher is shown (`teacher.rubric_source`): the question's own, or a worse one.

The paper tests that the rubric's quality matters by training RCSD with worse rubrics. What the release
(carriegu0818/RCSD @ 521b538) has of them:
- `generic` (opsd_train_reward.py `GENERIC_RUBRIC`, `_use_generic_rubric`; rcsd_train_reward.py
  @ f2035f8 L371-418): the same six-criterion rubric for every question, each weight 1. Shipped verbatim
  in `data/rubrics/generic_rubric.json`.
- `ground_truth` (`--rubric_source gt`, `_use_ground_truth_rubric`): the data set's own rubric.
- `random`, `noisy`, `reduced` (scripts/run_opsd_rar_reward_8b_2gpu_cache_{random,noisy,reduced}_
  rubric_b0.sh @ 8509ca9): `--rubric_source cache` with a rubric cache of that name
  (`RGSD-Random-Rubric`, ...) that the release does not say how it built. rcsd's definitions, each
  drawn from `seed` so that a run's rubrics are the same on every rank and after a resume:
  - `random`: the generated rubric of another training question, by a seeded random derangement
    (a permutation with no question left in place);
  - `noisy`: the question's generated rubric with half its criteria (rounded down, at least one)
    replaced, in place, by criteria of its `random` partner's generated rubric;
  - `reduced`: a seeded half of the question's generated criteria (rounded up), in their order.
`shifted` is rcsd's learnability control: the next training question's rubric (a cyclic shift).
"""

from __future__ import annotations

import json
import math
import random
from functools import lru_cache
from importlib import resources

from rcsd.client.protocol import Criterion
from rcsd.client.protocol.common import MAX_WEIGHT, MIN_WEIGHT
from rcsd.trainer.data.questions import Question
from rcsd.trainer.judge import item_weight

GENERIC_RUBRIC_FILE = "generic_rubric.json"  # in rcsd/trainer/data/rubrics/


@lru_cache(maxsize=1)
def generic_rubric() -> tuple[Criterion, ...]:
    """The release's `GENERIC_RUBRIC`: six problem-independent steps, weight 1 each."""
    folder = resources.files("rcsd.trainer") / "data" / "rubrics"
    items = json.loads((folder / GENERIC_RUBRIC_FILE).read_text(encoding="utf-8"))
    return tuple(Criterion.model_validate(item) for item in items)


def ground_truth_rubric(question: Question) -> list[Criterion]:
    """The question's data-set rubric as criteria: the title, else "Criterion {n}" (the release's
    fallback for RubricHub items); the weight rounded into -1..10, a category's when there is none
    (`rcsd.trainer.judge.item_weight`). A ValueError for a question without a rubric."""
    if not question.rubric:
        raise ValueError(
            f"teacher.rubric_source ground_truth needs a rubric in the data: question {question.id} has none"
        )
    return [
        Criterion(
            title=item.title or f"Criterion {number}",
            description=item.description,
            weight=min(max(round(item_weight(item)), MIN_WEIGHT), MAX_WEIGHT),
        )
        for number, item in enumerate(question.rubric, start=1)
    ]


def question_rng(source: str, seed: int, question_id: str) -> random.Random:
    """The draws of one question's rubric: fixed by the run's seed and the question alone."""
    return random.Random(f"{source}:{seed}:{question_id}")


def derangement(count: int, rng: random.Random) -> list[int]:
    """A uniformly drawn permutation of range(count) that moves every index (count >= 2)."""
    if count < 2:
        raise ValueError("a derangement needs at least two items")
    while True:  # rejection: about e draws on average
        order = list(range(count))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def partners(questions: list[Question], source: str, seed: int) -> dict[str, Question]:
    """Whose generated rubric each question's ablation is built from: itself, the next question
    (`shifted`), or its derangement partner (`random`, `noisy`)."""
    if source in ("shifted", "random", "noisy") and len(questions) < 2:
        raise ValueError(f"teacher.rubric_source {source} needs at least two training questions")
    if source == "shifted":
        others = questions[1:] + questions[:1]
    elif source in ("random", "noisy"):
        others = [questions[i] for i in derangement(len(questions), random.Random(f"random:{seed}"))]
    else:
        others = questions
    return {q.id: other for q, other in zip(questions, others, strict=True)}


def reduced(criteria: list[Criterion], rng: random.Random) -> list[Criterion]:
    """Half the criteria (rounded up), drawn by `rng`, in their order."""
    keep = sorted(rng.sample(range(len(criteria)), math.ceil(len(criteria) / 2)))
    return [criteria[i] for i in keep]


def noisy(own: list[Criterion], other: list[Criterion], rng: random.Random) -> list[Criterion]:
    """`own` with half its criteria (rounded down, at least one; no more than `other` has) replaced in
    place by criteria drawn from `other`."""
    count = min(max(len(own) // 2, 1), len(own), len(other))
    places = rng.sample(range(len(own)), count)
    result = list(own)
    for place, criterion in zip(places, rng.sample(other, count), strict=True):
        result[place] = criterion
    return result
