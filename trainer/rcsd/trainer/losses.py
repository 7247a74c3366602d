"""Distillation and RL losses: pure functions over tensors, each returning `(loss, metrics)`.

Shapes are in the names: B completions, T completion positions, V the student's vocabulary, K the
teacher's top-K ids per position. The top-K losses take the student's logits at the teacher's ids only
(`gather_topk`), so the trainer never holds [B, T, V] logits for them (`student.score_completions`). `mask_B_T` is True on real completion tokens; every loss is averaged
over those tokens (a batch with none gives a zero that still has a graph, so no NaN reaches the step):
`normalize="token"` takes one mean over all of them, `"completion"` (the release's) each completion's
token mean, then the mean over completions, so a long answer weighs as much as a short one.

- `topk_fkl` (the released RCSD loss) and `topk_jsd` compare the student with the teacher on the
  teacher's top-K ids at each position, both renormalised over those K ids at temperature `tau`.
  Renormalising makes the teacher's normaliser cancel, so the service's top-K log-probs at
  temperature 1 give the loss at any `tau`.
- `sampled_rkl`: on-policy distillation's sampled-token reverse KL, as a policy gradient.
- `grpo_loss` + `group_advantages`: the GRPO baseline.

Every loss takes optional `token_weights_B_T` (detached), which multiply each token's term before the
mean: `truncated_importance_weights` for the sampler mismatch (TIS), off (None) by default.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Metrics = dict[str, float]
Normalize = Literal["token", "completion"]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 at least (bfloat16 logits are upcast; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked_mean(values_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Mean over the True positions; a graph-connected 0 when there are none."""
    return torch.where(mask_B_T, values_B_T, 0.0).sum() / mask_B_T.sum().clamp(min=1)


def _loss_mean(values_B_T: torch.Tensor, mask_B_T: torch.Tensor, normalize: Normalize) -> torch.Tensor:
    """The loss's mean of its token terms: over all True positions (`token`), or over completions of
    each completion's mean (`completion`; a completion with no True position counts as 0)."""
    if normalize == "token":
        return _masked_mean(values_B_T, mask_B_T)
    if normalize != "completion":
        raise ValueError(f"normalize must be token or completion, not {normalize}")
    per_completion_B = torch.where(mask_B_T, values_B_T, 0.0).sum(-1) / mask_B_T.sum(-1).clamp(min=1)
    return per_completion_B.sum() / max(per_completion_B.numel(), 1)


def _weighted(values_B_T: torch.Tensor, token_weights_B_T: torch.Tensor | None) -> torch.Tensor:
    return values_B_T if token_weights_B_T is None else values_B_T * token_weights_B_T.detach()


def gather_topk(
    student_logits_B_T_V: torch.Tensor, teacher_topk_ids_B_T_K: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's logits at the teacher's top-K ids, and which of those ids its vocabulary holds.

    Gathered before any upcast: never a float32 copy of the whole [B, T, V]. An id outside the
    student's vocabulary (K larger than what the teacher could return) reads logit 0 and is marked.
    """
    vocab = student_logits_B_T_V.shape[-1]
    ids_B_T_K = teacher_topk_ids_B_T_K.long()
    in_vocab_B_T_K = (ids_B_T_K >= 0) & (ids_B_T_K < vocab)
    safe_ids_B_T_K = torch.where(in_vocab_B_T_K, ids_B_T_K, 0)
    return student_logits_B_T_V.gather(-1, safe_ids_B_T_K), in_vocab_B_T_K


def _topk_log_distributions(
    student_topk_logits_B_T_K: torch.Tensor,
    in_vocab_B_T_K: torch.Tensor,
    teacher_topk_logprobs_B_T_K: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher and student log-distributions at `tau`, renormalised over the teacher's valid top-K ids.

    A top-K entry is invalid (padding) when its log-prob is -inf or its id lies outside the student's
    vocabulary. Invalid entries get a very negative finite logit, so they carry no probability and a
    row with no valid entry stays finite.
    Returns `(teacher_logp_B_T_K, student_logq_B_T_K, valid_B_T_K)`, in float32 at least.
    """
    valid_B_T_K = in_vocab_B_T_K & torch.isfinite(teacher_topk_logprobs_B_T_K)
    student_B_T_K = _wide(student_topk_logits_B_T_K) / tau
    teacher_wide_B_T_K = _wide(teacher_topk_logprobs_B_T_K).to(student_B_T_K.dtype)  # a float64 student too
    teacher_B_T_K = torch.where(valid_B_T_K, teacher_wide_B_T_K, 0.0) / tau
    floor = torch.finfo(student_B_T_K.dtype).min / 4  # finite, so 0 * (floor - floor) stays 0
    teacher_logp_B_T_K = teacher_B_T_K.masked_fill(~valid_B_T_K, floor).log_softmax(-1)
    student_logq_B_T_K = student_B_T_K.masked_fill(~valid_B_T_K, floor).log_softmax(-1)
    return teacher_logp_B_T_K, student_logq_B_T_K, valid_B_T_K


def _kl_terms(logp_B_T_K: torch.Tensor, logq_B_T_K: torch.Tensor, valid_B_T_K: torch.Tensor) -> torch.Tensor:
    """Per-id terms p_k (log p_k - log q_k) of KL(p || q); 0 on invalid ids."""
    return torch.where(valid_B_T_K, logp_B_T_K.exp() * (logp_B_T_K - logq_B_T_K), 0.0)


def _reduce_terms(
    terms_B_T_K: torch.Tensor,
    valid_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor,
    clip: float | None,
    token_weights_B_T: torch.Tensor | None,
    normalize: Normalize,
) -> tuple[torch.Tensor, Metrics]:
    """Clip each id's term at `clip` (a clipped term passes no gradient), sum over ids, weight, mean over tokens."""
    valid_B_T_K = valid_B_T_K & mask_B_T.unsqueeze(-1)
    clipped_B_T_K = terms_B_T_K if clip is None else terms_B_T_K.clamp(max=clip)
    loss = _loss_mean(_weighted(clipped_B_T_K.sum(-1), token_weights_B_T), mask_B_T, normalize)
    n_terms = valid_B_T_K.sum().clamp(min=1)
    was_clipped = (terms_B_T_K > clip) & valid_B_T_K if clip is not None else torch.zeros_like(valid_B_T_K)
    metrics = {
        "loss": loss.item(),
        "divergence_unclipped": _masked_mean(terms_B_T_K.detach().sum(-1), mask_B_T).item(),
        "clip_fraction": (was_clipped.sum() / n_terms).item(),
        "tokens": float(mask_B_T.sum().item()),
    }
    return loss, metrics


def topk_fkl(
    student_topk_logits_B_T_K: torch.Tensor,
    in_vocab_B_T_K: torch.Tensor,
    teacher_topk_logprobs_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    tau: float = 1.2,
    clip: float | None = 0.05,
    token_weights_B_T: torch.Tensor | None = None,
    normalize: Normalize = "token",
) -> tuple[torch.Tensor, Metrics]:
    """The released RCSD loss: forward KL(teacher || student) on the teacher's top-K ids, per-id clipped.

    `student_topk_logits_B_T_K[b, t]` are the student's logits (predicting completion token t) at the
    teacher's top-K ids there, as `gather_topk` or `rcsd.trainer.student.score_completions` give them.
    """
    logp, logq, valid = _topk_log_distributions(
        student_topk_logits_B_T_K, in_vocab_B_T_K, teacher_topk_logprobs_B_T_K, tau
    )
    return _reduce_terms(_kl_terms(logp, logq, valid), valid, mask_B_T, clip, token_weights_B_T, normalize)


def topk_jsd(
    student_topk_logits_B_T_K: torch.Tensor,
    in_vocab_B_T_K: torch.Tensor,
    teacher_topk_logprobs_B_T_K: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    beta: float = 0.5,
    tau: float = 1.2,
    clip: float | None = None,
    token_weights_B_T: torch.Tensor | None = None,
    normalize: Normalize = "token",
) -> tuple[torch.Tensor, Metrics]:
    """Generalised JSD on the teacher's top-K ids: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.

    The JSD itself vanishes at both ends (JSD_beta / beta -> KL(p || q) as beta -> 0), so as in GKD the
    ends are defined as the KLs they approach: beta=0 is forward KL(teacher || student), beta=1 reverse
    KL(student || teacher).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], not {beta}")
    logp, logq, valid = _topk_log_distributions(
        student_topk_logits_B_T_K, in_vocab_B_T_K, teacher_topk_logprobs_B_T_K, tau
    )
    if beta == 0.0:
        terms = _kl_terms(logp, logq, valid)
    elif beta == 1.0:
        terms = _kl_terms(logq, logp, valid)
    else:
        log_m = torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))
        terms = beta * _kl_terms(logp, log_m, valid) + (1 - beta) * _kl_terms(logq, log_m, valid)
    return _reduce_terms(terms, valid, mask_B_T, clip, token_weights_B_T, normalize)


def sampled_rkl(
    student_logprobs_B_T: torch.Tensor,
    teacher_logprobs_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    advantage_clip: float | None = None,
    token_weights_B_T: torch.Tensor | None = None,
    normalize: Normalize = "token",
) -> tuple[torch.Tensor, Metrics]:
    """On-policy distillation: a policy gradient with per-token advantage log p_teacher - log p_student.

    The advantage is detached, so the gradient is -advantage * grad log p_student (the sampled-token
    estimate of the reverse KL's gradient), optionally clipped to [-advantage_clip, advantage_clip].
    """
    advantage_B_T = (_wide(teacher_logprobs_B_T) - _wide(student_logprobs_B_T)).detach()
    reverse_kl = _masked_mean(-advantage_B_T, mask_B_T)
    if advantage_clip is not None:
        advantage_B_T = advantage_B_T.clamp(-advantage_clip, advantage_clip)
    loss = _loss_mean(
        _weighted(-(advantage_B_T * _wide(student_logprobs_B_T)), token_weights_B_T), mask_B_T, normalize
    )
    metrics = {
        "loss": loss.item(),
        "reverse_kl_sampled": reverse_kl.item(),
        "advantage": _masked_mean(advantage_B_T, mask_B_T).item(),
        "tokens": float(mask_B_T.sum().item()),
    }
    return loss, metrics


def grpo_loss(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    loss_type: str = "token_mean",
    token_weights_B_T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO's clipped surrogate, -min(r A, clip(r, 1 - eps, 1 + eps) A). No KL penalty to a reference model.

    `loss_type="grpo"` (TRL's, the release's): normalize completion, averaged over each completion's
    tokens, then over completions. `"token_mean"`: normalize token, averaged over all valid tokens at
    once (as DAPO), so every completion token weighs the same.
    """
    ratio_B_T = (_wide(logprobs_B_T) - _wide(old_logprobs_B_T).detach()).exp()
    advantage_B_1 = _wide(advantages_B).detach().unsqueeze(-1)
    unclipped_B_T = ratio_B_T * advantage_B_1
    clipped_B_T = ratio_B_T.clamp(1 - clip_eps, 1 + clip_eps) * advantage_B_1
    per_token_B_T = _weighted(-torch.minimum(unclipped_B_T, clipped_B_T), token_weights_B_T)
    if loss_type not in ("grpo", "token_mean"):
        raise ValueError(f"loss_type must be grpo or token_mean, not {loss_type}")
    loss = _loss_mean(per_token_B_T, mask_B_T, "completion" if loss_type == "grpo" else "token")
    was_clipped_B_T = (clipped_B_T < unclipped_B_T) & mask_B_T
    metrics = {
        "loss": loss.item(),
        "ratio": _masked_mean(ratio_B_T.detach(), mask_B_T).item(),
        "clip_fraction": (was_clipped_B_T.sum() / mask_B_T.sum().clamp(min=1)).item(),
        "tokens": float(mask_B_T.sum().item()),
    }
    return loss, metrics


def group_advantages(rewards_G: torch.Tensor, eps: float = 1e-6, *, unbiased: bool = False) -> torch.Tensor:
    """GRPO advantages of one group: rewards centred on the group mean and divided by its std (+ eps).

    `unbiased=False`: the population std (no Bessel correction). `unbiased=True, eps=1e-4`: TRL's (the
    release's). A group of one gets advantage 0 either way, rather than NaN.
    """
    rewards_G = _wide(rewards_G)
    centred_G = rewards_G - rewards_G.mean()
    if rewards_G.numel() < 2:
        return torch.zeros_like(centred_G)
    return centred_G / (rewards_G.std(correction=1 if unbiased else 0) + eps)


def truncated_importance_weights(
    trainer_logprobs_B_T: torch.Tensor, sampler_logprobs_B_T: torch.Tensor, mask_B_T: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights for sampler mismatch (TRL / verl's TIS): per sampled token,
    `min(exp(trainer_lp - sampler_lp), cap)`, detached, 0 off the mask. The metrics report the gap:
    the mean of `trainer_lp - sampler_lp` over real tokens, its mean absolute value, and the share
    of tokens whose weight hit the cap."""
    if cap <= 0:
        raise ValueError(f"cap must be > 0, not {cap}")
    gap_B_T = (trainer_logprobs_B_T.detach() - sampler_logprobs_B_T.detach()).to(torch.float64)
    weights_B_T = torch.exp(gap_B_T).clamp(max=cap) * mask_B_T
    real = mask_B_T.sum().clamp(min=1).to(torch.float64)
    metrics = {
        "sampler_gap": float((gap_B_T * mask_B_T).sum() / real),
        "sampler_gap_abs": float((gap_B_T.abs() * mask_B_T).sum() / real),
        "is_capped_frac": float(((torch.exp(gap_B_T) > cap) & mask_B_T).sum() / real),
    }
    return weights_B_T.to(trainer_logprobs_B_T.dtype), metrics
