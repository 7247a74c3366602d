"""Truncated importance weighting against an independent computation in plain Python."""

from __future__ import annotations

import math

import pytest
import torch

from rcsd.trainer.losses import truncated_importance_weights


def test_weights_match_a_plain_python_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    trainer = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    sampler = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    cap = 2.0
    weights, metrics = truncated_importance_weights(trainer, sampler, mask, cap)
    assert not weights.requires_grad  # detached: a weight, not a gradient path
    gaps, capped = [], 0
    for b in range(3):
        for t in range(5):
            d = float(trainer[b, t].detach()) - float(sampler[b, t])
            expected = min(math.exp(d), cap) if mask[b, t] else 0.0
            assert float(weights[b, t]) == pytest.approx(expected, rel=1e-12)
            if mask[b, t]:
                gaps.append(d)
                capped += math.exp(d) > cap
    assert metrics["sampler_gap"] == pytest.approx(sum(gaps) / len(gaps))
    assert metrics["sampler_gap_abs"] == pytest.approx(sum(abs(g) for g in gaps) / len(gaps))
    assert metrics["is_capped_frac"] == pytest.approx(capped / len(gaps))


def test_equal_log_probs_give_unit_weights() -> None:
    lp = torch.randn(2, 4)
    weights, metrics = truncated_importance_weights(lp, lp.clone(), torch.ones(2, 4, dtype=torch.bool), 2.0)
    assert torch.equal(weights, torch.ones(2, 4))
    assert metrics["sampler_gap"] == 0.0
