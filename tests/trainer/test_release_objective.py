"""The release's objective details, each against an independent computation."""

from __future__ import annotations

import math

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


def test_loss_clip_applies_to_topk_jsd() -> None:
    """The release clamps the per-id term for every beta; `loss.clip` now reaches `topk_jsd`."""
    torch.manual_seed(0)
    student = torch.randn(1, 3, 4) * 3
    teacher = (torch.randn(1, 3, 4) * 3).log_softmax(-1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    scores = CompletionScores(
        logprobs_B_T=torch.zeros(1, 3),
        topk_logits_B_T_K=student,
        in_vocab_B_T_K=torch.ones(1, 3, 4, dtype=torch.bool),
        token_ids_B_T=torch.zeros(1, 3, dtype=torch.long),
        mask_B_T=mask,
    )
    tau = 1.1
    for clip, overrides in ((0.01, ["loss.clip=0.01"]), (None, ["loss.clip=null"])):
        config = load_config(
            "smollm2_cpu.yaml", ["loss.name=topk_jsd", "loss.beta=0.5", f"loss.tau={tau}", *overrides]
        )
        loss, _ = _distillation_loss(config, scores, {"topk_logprobs_B_T_K": teacher})
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
