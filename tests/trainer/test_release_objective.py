"""The release's objective details, each against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from rcsd.trainer.config import load_config
from rcsd.trainer.student import CompletionScores
from rcsd.trainer.train import _distillation_loss, _lr_factor


def test_linear_schedule_matches_hf_default() -> None:
    """`lr_schedule: linear` decays to 0 at the last step, as HF TrainingArguments' default (the release's,
    warmup 0). rcsd's own warmup ramp ((step + 1) / warmup) differs from HF's (step / warmup): decay only."""
    for warmup in (0, 3):
        config = load_config("smollm2_cpu.yaml", ["lr_schedule=linear", "steps=10", f"warmup_steps={warmup}"])
        ours = _lr_factor(config)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        hf = get_linear_schedule_with_warmup(optimizer, warmup, 10)
        for step in range(warmup, 10):
            assert math.isclose(ours(step), hf.lr_lambdas[0](step), abs_tol=1e-12), (warmup, step)
        assert ours(10) == 0.0


def _jsd_terms(p: list[float], q: list[float], beta: float) -> list[float]:
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q, strict=True)]
    return [
        beta * a * math.log(a / c) + (1 - beta) * b * math.log(b / c) for a, b, c in zip(p, q, m, strict=True)
    ]


def _topk_scores(student: torch.Tensor, mask: torch.Tensor) -> CompletionScores:
    """The student's side of a top-K loss from its top-K logits [B, T, K]: every id in the vocabulary."""
    B, T, K = student.shape
    return CompletionScores(
        logprobs_B_T=torch.zeros(B, T),
        topk_logits_B_T_K=student,
        in_vocab_B_T_K=torch.ones(B, T, K, dtype=torch.bool),
        token_ids_B_T=torch.zeros(B, T, dtype=torch.long),
        mask_B_T=mask,
    )


def test_loss_clip_applies_to_topk_jsd() -> None:
    """The release clamps the per-id term for every beta; `loss.clip` now reaches `topk_jsd`."""
    torch.manual_seed(0)
    student = torch.randn(1, 3, 4) * 3
    teacher = (torch.randn(1, 3, 4) * 3).log_softmax(-1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    scores = _topk_scores(student, mask)
    tau = 1.1
    for clip, overrides in ((0.01, ["loss.clip=0.01"]), (None, ["loss.clip=null"])):
        config = load_config(
            "smollm2_cpu.yaml", ["loss.name=topk_jsd", "loss.beta=0.5", f"loss.tau={tau}", *overrides]
        )
        loss, _ = _distillation_loss(config, scores, {"topk_logprobs_B_T_K": teacher}, None)
        expected = 0.0
        for t in range(3):
            p = (teacher[0, t] / tau).softmax(-1).tolist()
            q = (student[0, t] / tau).softmax(-1).tolist()
            terms = _jsd_terms(p, q, 0.5)
            expected += sum(min(x, clip) if clip is not None else x for x in terms)
        assert math.isclose(loss.item(), expected / 3, rel_tol=1e-5), clip


def test_grpo_matches_trl_loss_type_grpo() -> None:
    """TRL's loss_type grpo: advantages (r - mean) / (std_unbiased + 1e-4); per-completion mean, then mean."""
    from rcsd.trainer import losses

    rewards = [1.0, 0.0, 0.0, 1.0, 1.0]
    mean = sum(rewards) / 5
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 4)
    expected_adv = [(r - mean) / (std + 1e-4) for r in rewards]
    adv = losses.group_advantages(torch.tensor(rewards), 1e-4, unbiased=True)
    assert torch.allclose(adv, torch.tensor(expected_adv, dtype=adv.dtype))
    torch.manual_seed(0)
    logprobs = torch.randn(5, 6, dtype=torch.float64)
    old = logprobs + 0.3 * torch.randn(5, 6, dtype=torch.float64)
    lengths = [6, 2, 4, 1, 3]
    mask = torch.tensor([[t < n for t in range(6)] for n in lengths])
    loss, _ = losses.grpo_loss(logprobs, old, adv, mask, clip_eps=0.2, loss_type="grpo")
    per_seq = []
    for b, n in enumerate(lengths):
        terms = []
        for t in range(n):
            r = math.exp(logprobs[b, t].item() - old[b, t].item())
            a = expected_adv[b]
            terms.append(-min(r * a, min(max(r, 0.8), 1.2) * a))
        per_seq.append(sum(terms) / n)
    assert math.isclose(loss.item(), sum(per_seq) / 5, rel_tol=1e-5)  # float32 advantages
    token_loss, _ = losses.grpo_loss(logprobs, old, adv, mask, loss_type="token_mean")
    assert not math.isclose(token_loss.item(), loss.item())
    assert losses.group_advantages(torch.tensor([1.0]), unbiased=True).item() == 0.0


def _release_completion_loss(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, clip: float
) -> torch.Tensor:
    """The release's loss on a micro-batch of one completion (TRAINER L500-550, beta 0 and the top-K already
    gathered): F.kl_div on the tau-scaled log-softmaxes, clamped per id, summed, divided by its tokens."""
    student_log_probs = torch.nn.functional.log_softmax(student / tau, dim=-1)
    teacher_log_probs = torch.nn.functional.log_softmax(teacher / tau, dim=-1)
    jsd = torch.nn.functional.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    jsd = jsd.clamp(max=clip)
    return jsd.sum() / student.shape[0]


def test_completion_normalisation_matches_the_release() -> None:
    """`loss.normalize: completion`: two completions of 5 and 2 tokens weigh the same, as the release's
    micro-batches of one completion averaged by gradient accumulation; loss by hand (Python floats),
    gradient against the release's reduction run one completion at a time."""
    torch.manual_seed(0)
    lengths, tau, clip = [5, 2], 1.2, 0.05
    student = (torch.randn(2, 5, 4, dtype=torch.float64) * 2).requires_grad_()
    teacher = (torch.randn(2, 5, 4, dtype=torch.float64) * 2).log_softmax(-1)
    mask = torch.tensor([[t < n for t in range(5)] for n in lengths])
    scores = _topk_scores(student, mask)
    config = load_config("smollm2_cpu.yaml", [f"loss.tau={tau}", f"loss.clip={clip}"])
    assert config.loss.normalize == "completion"  # the default: the release's
    loss, _ = _distillation_loss(config, scores, {"topk_logprobs_B_T_K": teacher}, None)

    per_completion = []
    for b, n in enumerate(lengths):
        total = 0.0
        for t in range(n):
            p = (teacher[b, t] / tau).softmax(-1).tolist()
            q = (student[b, t].detach() / tau).softmax(-1).tolist()
            total += sum(min(a * math.log(a / c), clip) for a, c in zip(p, q, strict=True))
        per_completion.append(total / n)
    assert math.isclose(loss.item(), sum(per_completion) / 2, rel_tol=1e-12)

    (grad,) = torch.autograd.grad(loss, student)
    release = sum(
        _release_completion_loss(student[b, :n], teacher[b, :n], tau, clip) for b, n in enumerate(lengths)
    )
    (expected,) = torch.autograd.grad(release / len(lengths), student)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)

    token_config = load_config(
        "smollm2_cpu.yaml", [f"loss.tau={tau}", f"loss.clip={clip}", "loss.normalize=token"]
    )
    token_loss, _ = _distillation_loss(token_config, scores, {"topk_logprobs_B_T_K": teacher}, None)
    all_terms = [v * n for v, n in zip(per_completion, lengths, strict=True)]
    assert math.isclose(token_loss.item(), sum(all_terms) / sum(lengths), rel_tol=1e-12)
    assert not math.isclose(token_loss.item(), loss.item(), rel_tol=1e-3)

    # truncated importance weights multiply each token's term inside its completion's mean
    weights = torch.rand(2, 5, dtype=torch.float64)
    weighted, _ = _distillation_loss(config, scores, {"topk_logprobs_B_T_K": teacher}, weights)
    by_hand = [
        sum(
            float(weights[b, t])
            * _release_completion_loss(student[b, t : t + 1], teacher[b, t : t + 1], tau, clip).item()
            for t in range(n)
        )
        / n
        for b, n in enumerate(lengths)
    ]
    assert math.isclose(weighted.item(), sum(by_hand) / 2, rel_tol=1e-12)


def test_grpo_normalisation_follows_its_loss_type() -> None:
    """GRPO's loss_type grpo is TRL's per-completion mean: loss.normalize must say the same."""
    grpo = ["method=grpo", "rollouts_per_prompt=2", "teacher.reason_first=false"]
    assert load_config("smollm2_cpu.yaml", grpo).loss.normalize == "completion"
    load_config("smollm2_cpu.yaml", [*grpo, "loss.grpo_loss_type=token_mean", "loss.normalize=token"])
    for mismatch in (["loss.grpo_loss_type=token_mean"], ["loss.normalize=token"]):
        with pytest.raises(ValueError, match="loss.normalize"):
            load_config("smollm2_cpu.yaml", [*grpo, *mismatch])


def test_groups_weigh_by_completions_across_the_step() -> None:
    """Each group's loss enters the step weighted by what it averages over, out of the step's global
    count: its completions under `completion`, so the step is the mean over all completions (groups of
    1 and 3 answers weigh 1/4 and 3/4 whatever their lengths); its tokens under `token`."""
    from rcsd.trainer.data.questions import load_questions
    from rcsd.trainer.rollout import Rollout
    from rcsd.trainer.train import Group, _loss_count

    question = load_questions(["scibench_heldout"])[0]
    groups = [
        Group(0, question, [Rollout([1], [5] * 40, False)], None),
        Group(1, question, [Rollout([1], [5] * n, False) for n in (2, 3, 4)], None),
    ]
    completion = load_config("smollm2_cpu.yaml")
    token = load_config("smollm2_cpu.yaml", ["loss.normalize=token"])
    assert [_loss_count(completion, [g]) for g in groups] == [1.0, 3.0]
    assert _loss_count(completion, groups) == 4.0
    assert [_loss_count(token, [g]) for g in groups] == [40.0, 9.0] and _loss_count(token, groups) == 49.0
