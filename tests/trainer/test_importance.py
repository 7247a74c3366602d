"""Truncated importance weighting against independent computations: plain Python, and each loss
taken one token at a time; the loop's sampler-vs-trainer gap from rollouts with known offsets."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from rcsd.trainer import losses
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.losses import truncated_importance_weights
from rcsd.trainer.rollout import Rollout
from rcsd.trainer.train import _sampler_gap


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


def _one_token(t: torch.Tensor, b: int, i: int) -> torch.Tensor:
    return t[b : b + 1, i : i + 1]


@pytest.mark.parametrize("name", ["topk_fkl", "topk_jsd", "sampled_rkl", "grpo_token_mean"])
def test_token_weights_scale_each_tokens_term(name: str) -> None:
    """A weighted loss is the weighted mean of the same loss taken on each token alone."""
    gen = torch.Generator().manual_seed(1)
    B, T, K = 2, 4, 3
    student_B_T_K = torch.randn(B, T, K, generator=gen, dtype=torch.float64)
    teacher_B_T_K = torch.randn(B, T, K, generator=gen, dtype=torch.float64).log_softmax(-1)
    in_vocab_B_T_K = torch.ones(B, T, K, dtype=torch.bool)
    student_lp_B_T = -torch.rand(B, T, generator=gen, dtype=torch.float64)
    teacher_lp_B_T = -torch.rand(B, T, generator=gen, dtype=torch.float64)
    advantages_B = torch.tensor([0.7, -1.3], dtype=torch.float64)
    mask_B_T = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    weights_B_T = torch.rand(B, T, generator=gen, dtype=torch.float64) * 2

    def loss(b: slice | int, t: slice | int, weights: torch.Tensor | None) -> torch.Tensor:
        pick = (lambda x: x) if isinstance(b, slice) else (lambda x: _one_token(x, b, t))
        if name == "topk_fkl":
            args = (pick(student_B_T_K), pick(in_vocab_B_T_K), pick(teacher_B_T_K), pick(mask_B_T))
            return losses.topk_fkl(*args, token_weights_B_T=weights)[0]
        if name == "topk_jsd":
            args = (pick(student_B_T_K), pick(in_vocab_B_T_K), pick(teacher_B_T_K), pick(mask_B_T))
            return losses.topk_jsd(*args, token_weights_B_T=weights)[0]
        if name == "sampled_rkl":
            args = (pick(student_lp_B_T), pick(teacher_lp_B_T), pick(mask_B_T))
            return losses.sampled_rkl(*args, token_weights_B_T=weights)[0]
        adv = advantages_B if isinstance(b, slice) else advantages_B[b : b + 1]
        lp = pick(student_lp_B_T)
        return losses.grpo_loss(lp, lp.detach(), adv, pick(mask_B_T), token_weights_B_T=weights)[0]

    weighted = loss(slice(None), slice(None), weights_B_T)
    per_token = [
        float(weights_B_T[b, t]) * float(loss(b, t, None))
        for b in range(B)
        for t in range(T)
        if mask_B_T[b, t]
    ]
    assert float(weighted) == pytest.approx(sum(per_token) / len(per_token), rel=1e-12)
    assert float(loss(slice(None), slice(None), torch.ones(B, T, dtype=torch.float64))) == pytest.approx(
        float(loss(slice(None), slice(None), None)), rel=1e-12
    )


def test_sampler_gap_metrics_and_weights_from_rollouts() -> None:
    """The loop's gap: sampler log-probs below the trainer's by known amounts, padding ignored."""
    config = TrainConfig(rollout_engine="vllm_colocate", loss={"importance_cap": 1.5})
    trainer_B_T = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], dtype=torch.float64)
    mask_B_T = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    offsets = [[0.1, -0.2, 0.9], [0.0, 0.3]]  # trainer - sampler
    rollouts = [
        Rollout([1], [5] * len(row), False, [float(trainer_B_T[b, t]) - d for t, d in enumerate(row)])
        for b, row in enumerate(offsets)
    ]
    sums: defaultdict[str, float] = defaultdict(float)
    weights_B_T = _sampler_gap(config, rollouts, trainer_B_T, mask_B_T, sums)
    flat = [d for row in offsets for d in row]
    assert sums["sampler_tokens"] == 5
    assert sums["sampler_gap"] == pytest.approx(sum(flat))
    assert sums["sampler_gap_abs"] == pytest.approx(sum(abs(d) for d in flat))
    assert sums["sampler_gap_max"] == pytest.approx(0.9)
    assert sums["is_capped"] == pytest.approx(1.0)  # exp(0.9) > 1.5
    assert weights_B_T is not None
    for b, row in enumerate(offsets):
        for t, d in enumerate(row):
            assert float(weights_B_T[b, t]) == pytest.approx(min(math.exp(d), 1.5))
    assert float(weights_B_T[1, 2]) == 0.0
    no_cap = TrainConfig(rollout_engine="vllm_colocate")
    assert _sampler_gap(no_cap, rollouts, trainer_B_T, mask_B_T, defaultdict(float)) is None
