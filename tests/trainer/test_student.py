"""The chunked student scores equal the full-logits computation: values and gradients, with LoRA on.

The reference runs the whole model forward (its [B, T, V] logits), then log-softmax and gathers: what
the trainer did before it learned to never hold [T, V] at once.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rcsd.trainer import losses
from rcsd.trainer.student import score_completions

PROMPT = [5, 17, 42, 9]
COMPLETIONS = [[11, 12, 13, 14, 15, 16, 17], [21, 22, 23], [31, 32, 33, 34, 35]]
K = 6


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # non-zero B matrices, so the adapter changes the outputs
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return lora


def _reference(model, topk_ids_B_T_K):
    T = max(len(c) for c in COMPLETIONS)
    ids = torch.zeros(len(COMPLETIONS), T, dtype=torch.long)
    mask = torch.zeros(len(COMPLETIONS), T, dtype=torch.bool)
    for b, c in enumerate(COMPLETIONS):
        ids[b, : len(c)], mask[b, : len(c)] = torch.tensor(c), True
    inputs = torch.cat([torch.tensor(PROMPT).expand(len(COMPLETIONS), -1), ids], 1)
    attention = torch.cat([torch.ones(len(COMPLETIONS), len(PROMPT), dtype=torch.bool), mask], 1)
    logits = model(input_ids=inputs[:, :-1], attention_mask=attention[:, :-1]).logits[:, len(PROMPT) - 1 :]
    logprobs = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return logprobs, *losses.gather_topk(logits, topk_ids_B_T_K), mask


def _topk_ids(vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (len(COMPLETIONS), max(map(len, COMPLETIONS)), K), generator=generator)
    ids[0, 0, -1] = vocab + 3  # an id the student's vocabulary lacks
    return ids


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_scores_equal_the_full_logits(model, chunk_size):
    vocab = model.get_output_embeddings().weight.shape[0]
    topk_ids = _topk_ids(vocab)
    teacher_lp = torch.randn(topk_ids.shape, dtype=torch.float64).log_softmax(-1)
    trainable = [p for p in model.parameters() if p.requires_grad]

    ref_lp, ref_topk, ref_in_vocab, mask = _reference(model, topk_ids)
    ref_loss = losses.topk_fkl(ref_topk, ref_in_vocab, teacher_lp, mask, clip=None)[0] + (ref_lp * mask).sum()
    ref_grads = torch.autograd.grad(ref_loss, trainable)

    scores = score_completions(model, PROMPT, COMPLETIONS, 0, topk_ids, chunk_size=chunk_size)
    assert torch.equal(scores.mask_B_T, mask) and torch.equal(scores.in_vocab_B_T_K, ref_in_vocab)
    torch.testing.assert_close(scores.logprobs_B_T[mask], ref_lp[mask], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores.topk_logits_B_T_K[mask], ref_topk[mask], rtol=1e-12, atol=1e-12)
    loss = losses.topk_fkl(scores.topk_logits_B_T_K, scores.in_vocab_B_T_K, teacher_lp, mask, clip=None)[0]
    grads = torch.autograd.grad(loss + (scores.logprobs_B_T * mask).sum(), trainable)
    for got, want in zip(grads, ref_grads, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_adapter_is_inside_the_chunked_path(model):
    with model.disable_adapter(), torch.no_grad():
        plain = score_completions(model, PROMPT, COMPLETIONS, 0).logprobs_B_T
    with torch.no_grad():
        adapted = score_completions(model, PROMPT, COMPLETIONS, 0).logprobs_B_T
    assert (plain - adapted).abs().max() > 1e-4
