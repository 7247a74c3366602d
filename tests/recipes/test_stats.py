"""avg@n's standard error and bootstrap interval against independent computations: the textbook
standard deviation (`statistics`), the exact bootstrap distribution by enumerating every resample, and
a plain-Python bootstrap loop."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import numpy as np
import pytest

from rcsd.recipes.stats import Estimate, bootstrap_interval, estimate, overlaps, standard_error

SCORES = [1.0, 0.0, 0.5, 1.0, 0.25, 0.875]  # per-question means of n samples


def test_standard_error_is_the_sample_sd_over_root_n():
    assert standard_error(SCORES) == pytest.approx(statistics.stdev(SCORES) / math.sqrt(len(SCORES)))
    assert standard_error([1.0, 1.0, 1.0]) == 0.0
    assert standard_error([0.7]) == 0.0 and standard_error([]) == 0.0


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    """With 6 questions there are 6^6 equally likely resamples: their means' 2.5/97.5 percentiles are
    the interval the resampling estimates."""
    exact_means = [sum(pick) / len(SCORES) for pick in itertools.product(SCORES, repeat=len(SCORES))]
    exact = np.percentile(exact_means, [2.5, 97.5])
    low, high = bootstrap_interval(SCORES, resamples=200_000, seed=1)
    assert low == pytest.approx(exact[0], abs=0.01) and high == pytest.approx(exact[1], abs=0.01)


def test_bootstrap_matches_a_plain_python_bootstrap():
    rng = random.Random(7)
    scores = [rng.random() < 0.4 for _ in range(40)]
    means = sorted(statistics.fmean(rng.choices(scores, k=len(scores))) for _ in range(20_000))
    brute = (means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1])
    low, high = bootstrap_interval([float(s) for s in scores], resamples=20_000, seed=3)
    assert low == pytest.approx(brute[0], abs=0.03) and high == pytest.approx(brute[1], abs=0.03)


def test_seeded_and_sensible():
    assert bootstrap_interval(SCORES, seed=5) == bootstrap_interval(SCORES, seed=5)
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    spread = estimate(SCORES)
    assert isinstance(spread, Estimate) and spread.mean == pytest.approx(statistics.fmean(SCORES))
    assert spread.low <= spread.mean <= spread.high
    assert str(spread).startswith(f"{spread.mean:.3f} ± {spread.se:.3f} [")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [((0.1, 0.3), (0.2, 0.4), True), ((0.1, 0.2), (0.2, 0.4), True), ((0.1, 0.19), (0.2, 0.4), False),
     ((0.5, 0.6), (0.2, 0.4), False), ((0.0, 1.0), (0.4, 0.5), True)],
)  # fmt: skip
def test_overlaps(a, b, expected):
    assert overlaps(a, b) is expected and overlaps(b, a) is expected
