"""The losses against brute force: explicit per-position formulas in Python loops, float64, autograd.

The reference loops over every valid position and every valid top-K id, builds each probability from
its definition (exp / sum of exp) and each term from the formula in the paper, so it shares no code
(and no vectorised trick) with `rcsd.trainer.losses`.
"""

from __future__ import annotations

import math

import pytest
import torch

from rcsd.trainer.losses import gather_topk, group_advantages, grpo_loss, sampled_rkl, topk_fkl, topk_jsd


def full_fkl(logits_B_T_V, ids_B_T_K, logprobs_B_T_K, mask_B_T, **settings):
    """topk_fkl on the student's full logits, gathered at the teacher's ids as the trainer does."""
    return topk_fkl(*gather_topk(logits_B_T_V, ids_B_T_K), logprobs_B_T_K, mask_B_T, **settings)


def full_jsd(logits_B_T_V, ids_B_T_K, logprobs_B_T_K, mask_B_T, **settings):
    return topk_jsd(*gather_topk(logits_B_T_V, ids_B_T_K), logprobs_B_T_K, mask_B_T, **settings)


B, T, V, K = 3, 5, 11, 4


def _inputs(seed: int = 0, k: int = K) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student_logits = (torch.randn(B, T, V, generator=g) * 2).double().requires_grad_()
    teacher_full = torch.log_softmax(torch.randn(B, T, V, generator=g) * 2, -1).double()
    top = teacher_full.topk(min(k, V), -1)
    ids, logprobs = top.indices, top.values
    if k > V:  # K larger than the vocab slice: the extra entries are padding
        pad = (B, T, k - V)
        ids = torch.cat([ids, torch.full(pad, -1)], -1)
        logprobs = torch.cat([logprobs, torch.full(pad, -math.inf, dtype=torch.float64)], -1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False  # a short completion
    mask[2, 1] = False
    return {"logits": student_logits, "ids": ids, "logprobs": logprobs, "mask": mask}


def _valid_entries(x: dict[str, torch.Tensor], b: int, t: int) -> list[tuple[int, float]]:
    return [
        (int(x["ids"][b, t, k]), float(x["logprobs"][b, t, k]))
        for k in range(x["ids"].shape[-1])
        if 0 <= int(x["ids"][b, t, k]) < V and math.isfinite(float(x["logprobs"][b, t, k]))
    ]


def _softmax(values: list[torch.Tensor]) -> list[torch.Tensor]:
    exps = [v.exp() for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _brute(x: dict[str, torch.Tensor], tau: float, term_fn, clip: float | None) -> torch.Tensor:
    """Sum over valid tokens of sum_k min(term_k, clip), divided by the number of valid tokens."""
    total, n_tokens = torch.zeros((), dtype=torch.float64), 0
    for b in range(B):
        for t in range(T):
            if not x["mask"][b, t]:
                continue
            n_tokens += 1
            entries = _valid_entries(x, b, t)
            p = _softmax([torch.tensor(lp / tau, dtype=torch.float64) for _, lp in entries])
            q = _softmax([x["logits"][b, t, i] / tau for i, _ in entries])
            for p_k, q_k in zip(p, q, strict=True):
                term = term_fn(p_k, q_k)
                if clip is not None and term.item() > clip:
                    term = torch.tensor(clip, dtype=torch.float64)  # constant: no gradient
                total = total + term
    return total / n_tokens


def _forward_kl(p_k: torch.Tensor, q_k: torch.Tensor) -> torch.Tensor:
    return p_k * (torch.log(p_k) - torch.log(q_k))


def _reverse_kl(p_k: torch.Tensor, q_k: torch.Tensor) -> torch.Tensor:
    return q_k * (torch.log(q_k) - torch.log(p_k))


def _jsd(beta: float):
    def term(p_k: torch.Tensor, q_k: torch.Tensor) -> torch.Tensor:
        m_k = beta * p_k + (1 - beta) * q_k
        return beta * p_k * torch.log(p_k / m_k) + (1 - beta) * q_k * torch.log(q_k / m_k)

    return term


def _compare(loss: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor) -> None:
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("tau", [1.0, 1.2, 0.7])
@pytest.mark.parametrize("clip", [None, 0.05, 0.02])
def test_topk_fkl_matches_brute_force(tau, clip):
    x = _inputs(seed=1)
    loss, metrics = full_fkl(x["logits"], x["ids"], x["logprobs"], x["mask"], tau=tau, clip=clip)
    _compare(loss, _brute(x, tau, _forward_kl, clip), x["logits"])
    assert metrics["tokens"] == x["mask"].sum().item()
    assert metrics["loss"] == pytest.approx(loss.item())


def test_clip_is_active_and_a_clipped_term_passes_no_gradient():
    x = _inputs(seed=2)
    _, unclipped = full_fkl(x["logits"], x["ids"], x["logprobs"], x["mask"], clip=None)
    loss, metrics = full_fkl(x["logits"], x["ids"], x["logprobs"], x["mask"], clip=0.02)
    assert 0 < metrics["clip_fraction"] < 1
    assert loss.item() < unclipped["loss"]
    # one position, two ids: teacher p = (0.9, 0.1), student q = (0.1, 0.9), tau = 1. The first term
    # 0.9 log 9 is clipped (no gradient); the second, 0.1 log(1/9) < 0, is not: the gradient is that
    # of -0.1 log q_2 alone, -0.1 (onehot_2 - q) on the two logits.
    logits = torch.tensor([[[math.log(0.1), math.log(0.9), 5.0]]], dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[[0, 1]]])
    logprobs = torch.tensor([[[math.log(0.9), math.log(0.1)]]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, metrics = full_fkl(logits, ids, logprobs, mask, tau=1.0, clip=0.05)
    loss.backward()
    assert loss.item() == pytest.approx(0.05 + 0.1 * math.log(0.1 / 0.9))
    assert metrics["clip_fraction"] == 0.5
    torch.testing.assert_close(
        logits.grad, torch.tensor([[[0.1 * 0.1, -0.1 * (1 - 0.9), 0.0]]], dtype=torch.float64)
    )


def test_padding_masks_and_padded_positions_do_not_matter():
    x = _inputs(seed=3)
    loss, _ = full_fkl(x["logits"], x["ids"], x["logprobs"], x["mask"])
    # garbage at masked positions (the client pads with id 0 / log-prob 0, or -inf) changes nothing
    ids, logprobs = x["ids"].clone(), x["logprobs"].clone()
    ids[~x["mask"]] = 0
    logprobs[~x["mask"]] = -math.inf
    loss_padded, _ = full_fkl(x["logits"], ids, logprobs, x["mask"])
    assert loss_padded.item() == pytest.approx(loss.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(loss_padded, x["logits"])
    assert torch.isfinite(grad).all()
    assert torch.count_nonzero(grad[~x["mask"]]) == 0


def test_padded_topk_entries_are_excluded():
    x = _inputs(seed=4)
    ids, logprobs = x["ids"].clone(), x["logprobs"].clone()
    ids[:, :, -1] = -1  # a padded entry in the last slot of every position
    logprobs[:, :, -1] = -math.inf
    padded = dict(x, ids=ids, logprobs=logprobs)
    loss, _ = full_fkl(x["logits"], ids, logprobs, x["mask"], clip=None)
    _compare(loss, _brute(padded, 1.2, _forward_kl, None), x["logits"])


@pytest.mark.parametrize("loss_fn", [full_fkl, full_jsd])
def test_k_larger_than_the_vocab_slice(loss_fn):
    x = _inputs(seed=5, k=V + 3)
    assert x["ids"].shape[-1] > V
    loss, _ = loss_fn(x["logits"], x["ids"], x["logprobs"], x["mask"], tau=1.0)
    term = _forward_kl if loss_fn is full_fkl else _jsd(0.5)
    clip = 0.05 if loss_fn is full_fkl else None
    _compare(loss, _brute(x, 1.0, term, clip), x["logits"])


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_topk_jsd_matches_brute_force(beta):
    x = _inputs(seed=6)
    loss, _ = full_jsd(x["logits"], x["ids"], x["logprobs"], x["mask"], beta=beta, tau=1.2)
    _compare(loss, _brute(x, 1.2, _jsd(beta), None), x["logits"])


def test_topk_jsd_ends_are_forward_and_reverse_kl():
    x = _inputs(seed=7)
    args = (x["logits"], x["ids"], x["logprobs"], x["mask"])
    forward, _ = full_jsd(*args, beta=0.0)
    _compare(forward, _brute(x, 1.2, _forward_kl, None), x["logits"])
    fkl, _ = full_fkl(*args, clip=None)
    assert forward.item() == pytest.approx(fkl.item(), rel=1e-12)
    reverse, _ = full_jsd(*args, beta=1.0)
    _compare(reverse, _brute(x, 1.2, _reverse_kl, None), x["logits"])
    # and they are the limits: JSD_beta / beta -> forward KL, JSD_beta / (1 - beta) -> reverse KL
    eps = 1e-5
    near_0, _ = full_jsd(*args, beta=eps)
    near_1, _ = full_jsd(*args, beta=1 - eps)
    assert near_0.item() / eps == pytest.approx(forward.item(), rel=1e-3)
    assert near_1.item() / eps == pytest.approx(reverse.item(), rel=1e-3)


def test_tau_uses_only_the_topk_logprobs():
    """Any constant shift of the teacher's log-probs (its normaliser) cancels at every tau."""
    x = _inputs(seed=8)
    for tau in (0.8, 1.2, 2.0):
        a, _ = full_fkl(x["logits"], x["ids"], x["logprobs"], x["mask"], tau=tau, clip=None)
        b, _ = full_fkl(x["logits"], x["ids"], x["logprobs"] - 3.7, x["mask"], tau=tau, clip=None)
        assert a.item() == pytest.approx(b.item(), rel=1e-10)


def test_no_valid_token_gives_a_zero_with_a_graph():
    x = _inputs(seed=9)
    none = torch.zeros(B, T, dtype=torch.bool)
    loss, metrics = full_fkl(x["logits"], x["ids"], x["logprobs"], none)
    loss.backward()
    assert loss.item() == 0.0 and metrics["tokens"] == 0
    assert torch.count_nonzero(x["logits"].grad) == 0


def test_bfloat16_student_logits():
    x = _inputs(seed=10)
    loss32, _ = full_fkl(x["logits"].float(), x["ids"], x["logprobs"].float(), x["mask"])
    loss16, _ = full_fkl(x["logits"].bfloat16(), x["ids"], x["logprobs"].float(), x["mask"])
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=5e-2)


def _sampled_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 4).requires_grad_()
    teacher = -torch.rand(B, T, generator=g, dtype=torch.float64) * 4
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2:] = False
    return student, teacher, mask


@pytest.mark.parametrize("advantage_clip", [None, 0.5])
def test_sampled_rkl_matches_brute_force(advantage_clip):
    student, teacher, mask = _sampled_inputs(seed=11)
    loss, metrics = sampled_rkl(student, teacher, mask, advantage_clip=advantage_clip)
    total, grad, n = 0.0, torch.zeros(B, T, dtype=torch.float64), int(mask.sum())
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                a = teacher[b, t].item() - student[b, t].item()
                if advantage_clip is not None:
                    a = max(-advantage_clip, min(advantage_clip, a))
                total += -a * student[b, t].item() / n
                grad[b, t] = -a / n  # d/d log q of -(a * log q), with a held constant
    loss.backward()
    assert loss.item() == pytest.approx(total, rel=1e-6)
    torch.testing.assert_close(student.grad, grad)
    kl = sum(student[b, t].item() - teacher[b, t].item() for b in range(B) for t in range(T) if mask[b, t])
    assert metrics["reverse_kl_sampled"] == pytest.approx(kl / n, rel=1e-6)


@pytest.mark.parametrize("clip_eps", [0.2, 0.05])
def test_grpo_loss_matches_brute_force(clip_eps):
    new, _, mask = _sampled_inputs(seed=12)
    g = torch.Generator().manual_seed(13)
    old = (new.detach() + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2).detach()
    advantages = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    loss, metrics = grpo_loss(new, old, advantages, mask, clip_eps=clip_eps)
    total, grad, n, clipped = 0.0, torch.zeros(B, T, dtype=torch.float64), int(mask.sum()), 0
    for b in range(B):
        a = advantages[b].item()
        for t in range(T):
            if not mask[b, t]:
                continue
            r = math.exp(new[b, t].item() - old[b, t].item())
            r_clipped = max(1 - clip_eps, min(1 + clip_eps, r))
            if r_clipped * a < r * a:  # the clipped objective is the smaller: constant in r, no gradient
                total += -r_clipped * a / n
                clipped += 1
            else:
                total += -r * a / n
                grad[b, t] = -a * r / n  # d/d log p of -(exp(log p - log p_old) a)
    loss.backward()
    assert loss.item() == pytest.approx(total, rel=1e-6)
    torch.testing.assert_close(new.grad, grad)
    assert metrics["clip_fraction"] == pytest.approx(clipped / n)
    if clip_eps == 0.05:
        assert clipped > 0


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    mean = sum(rewards.tolist()) / 8
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards.tolist()) / 8)
    expected = [(r - mean) / (std + 1e-6) for r in rewards.tolist()]
    assert group_advantages(rewards).tolist() == pytest.approx(expected, rel=1e-6)
    assert group_advantages(torch.ones(4)).tolist() == [0.0] * 4  # no signal, no NaN
    assert group_advantages(torch.tensor([1.0])).tolist() == [0.0]
