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


# Student's t: the two-sided 95 % critical value t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)


def t_critical_95(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish-Fisher expansion around z (error < 1e-4)."""
    if df < 1:
        raise ValueError("a t-interval needs at least two values (df >= 1)")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over independent runs (seeds): mean ± t_{0.975, n-1} sd / sqrt(n).

    Seeds, not questions, are the unit here: each value is one run's measure. (nan, nan) below two runs."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean()) if array.size else math.nan
    if array.size < 2:
        return mean, math.nan, math.nan
    half = t_critical_95(array.size - 1) * float(array.std(ddof=1)) / math.sqrt(array.size)
    return mean, mean - half, mean + half


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share a point (touching counts as overlapping)."""
    return a[0] <= b[1] and b[0] <= a[1]
