"""Accuracy with its uncertainty over questions: avg@n, its standard error, a bootstrap 95 % interval.

Each question contributes one number: the mean of its n samples' scores (1/0 for a checked answer, the
rubric score for a judged one). Questions are the unit of resampling: the n samples of one question are
not independent draws of the benchmark, so the interval is over questions (as in Miller, "Adding Error
Bars to Evals", 2024, which clusters by question).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over questions with its standard error and a percentile-bootstrap interval."""

    mean: float
    se: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.se:.3f} [{self.low:.3f}, {self.high:.3f}]"


def standard_error(per_question: Sequence[float]) -> float:
    """The standard error of the mean over questions: sample sd (ddof 1) / sqrt(questions); 0 below two."""
    n = len(per_question)
    if n < 2:
        return 0.0
    return float(np.std(np.asarray(per_question, dtype=np.float64), ddof=1) / math.sqrt(n))


def bootstrap_interval(
    per_question: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean: questions drawn with replacement, seeded."""
    values = np.asarray(per_question, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    picks_R_Q = rng.integers(0, values.size, size=(resamples, values.size))
    means_R = values[picks_R_Q].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means_R, [tail, 100 - tail])
    return (float(low), float(high))


def estimate(
    per_question: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean, standard error and bootstrap interval of per-question scores."""
    mean = float(np.mean(per_question)) if len(per_question) else math.nan
    low, high = bootstrap_interval(per_question, resamples=resamples, seed=seed)
    return Estimate(mean=mean, se=standard_error(per_question), low=low, high=high)


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share a point (touching counts as overlapping)."""
    return a[0] <= b[1] and b[0] <= a[1]
