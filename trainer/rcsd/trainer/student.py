"""The student: loading it (dtype, LoRA or full weights, from a checkpoint) and its scores of completions.

The scores are taken on exactly the positions the teacher scored: the context is the student's
prompt and the completion the sampled ids, so row t of `score_completions` is about completion
token t, as `token_ids[t]` / `logprobs[t]` are in a teacher response.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rcsd.loading.dtype import choose_dtype
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer import losses
from rcsd.trainer.config import TrainConfig


@dataclass
class Student:
    model: Any  # a transformers causal LM, wrapped by peft when LoRA is on
    tokenizer: Any
    model_path: str  # the base model (what the teacher service must serve too)
    is_lora: bool
    dtype_reason: str

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def resolve_model(name: str) -> str:
    """A folder or a HF id; "default" is the bundled SmolLM2 (converted once)."""
    if name == "default":
        from rcsd.loading.bundled import prepare_default_model

        return str(prepare_default_model())
    return name


def load_student(config: TrainConfig, device: torch.device, resume_from: Path | None) -> Student:
    """The base model with a fresh (seeded) LoRA adapter, or the checkpoint's adapter or weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = resolve_model(config.model)
    choice = choose_dtype(config.dtype, device.type)
    dtype: Any = "auto" if choice.dtype == "auto" else getattr(torch, choice.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    full_weights = resume_from is not None and not config.lora.enabled
    source = str(ckpt.weights_dir(resume_from)) if full_weights and resume_from else model_path
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if config.lora.enabled:
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume_from is not None:
            model = PeftModel.from_pretrained(model, ckpt.weights_dir(resume_from), is_trainable=True)
        else:
            lora = LoraConfig(
                r=config.lora.r,
                lora_alpha=config.lora.alpha,
                lora_dropout=config.lora.dropout,
                target_modules=config.lora.target_modules,
                task_type="CAUSAL_LM",
            )
            with torch.random.fork_rng(devices=[]):  # the same init on every rank, whatever ran before
                torch.manual_seed(config.seed)
                model = get_peft_model(model, lora)
    model.train()
    return Student(model, tokenizer, model_path, config.lora.enabled, choice.reason)


@dataclass
class CompletionScores:
    """The student's scores of completions sharing one prompt; row t is about completion token t."""

    logprobs_B_T: torch.Tensor  # log q(token_t) at temperature 1, float32 at least
    topk_logits_B_T_K: torch.Tensor | None  # raw logits at the teacher's top-K ids (None if none asked)
    in_vocab_B_T_K: torch.Tensor | None  # which of those ids the student's vocabulary holds
    token_ids_B_T: torch.Tensor  # padded with the pad id
    mask_B_T: torch.Tensor  # True on real tokens


def score_completions(
    model: Any,
    prompt_ids: list[int],
    completions: list[list[int]],
    pad_id: int,
    topk_ids_B_T_K: torch.Tensor | None = None,
    *,
    chunk_size: int = 256,
) -> CompletionScores:
    """Log-probs of the sampled tokens and logits at the teacher's top-K ids, never [B, T, V] at once.

    The decoder runs once; the output head then runs on `chunk_size` positions at a time, each chunk
    reduced at once to its log-sum-exp, its sampled-token logit and its K gathered logits. With grad on,
    a chunk's [B, C, V] logits are recomputed in the backward pass (activation checkpointing), so the
    peak is one chunk's logits, not a 4,096-token answer's (2.5 GB in float32 at Qwen3's 152k vocabulary).
    Values and gradients equal the full-logits computation (tests/trainer/test_student.py).
    """
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (
        None,
        1,
        1.0,
    ):
        raise NotImplementedError(
            f"{config.model_type}: logits are not the output head's, scale or cap unsupported"
        )
    device = next(model.parameters()).device
    P, T = len(prompt_ids), max(len(c) for c in completions)
    token_ids_B_T = torch.full((len(completions), T), pad_id, dtype=torch.long)
    mask_B_T = torch.zeros(len(completions), T, dtype=torch.bool)
    for b, ids in enumerate(completions):
        token_ids_B_T[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask_B_T[b, : len(ids)] = True
    prompt_B_P = torch.tensor(prompt_ids, dtype=torch.long).expand(len(completions), P)
    input_B_L = torch.cat([prompt_B_P, token_ids_B_T], dim=1).to(device)
    attention_B_L = torch.cat([torch.ones(len(completions), P, dtype=torch.bool), mask_B_T], 1).to(device)
    token_ids_B_T, mask_B_T = token_ids_B_T.to(device), mask_B_T.to(device)
    # positions P-1 .. P+T-2 predict completion tokens 0 .. T-1; padding sits after every real token
    decoder = model.get_decoder()  # LoRA layers sit inside it (peft injects them in place)
    hidden_B_L_H = decoder(
        input_ids=input_B_L[:, :-1], attention_mask=attention_B_L[:, :-1]
    ).last_hidden_state
    hidden_B_T_H = hidden_B_L_H[:, P - 1 :]
    head = model.get_output_embeddings()
    parts = []
    for start in range(0, T, chunk_size):
        window = slice(start, start + chunk_size)
        topk = None if topk_ids_B_T_K is None else topk_ids_B_T_K[:, window].to(device)
        args = (head, hidden_B_T_H[:, window], token_ids_B_T[:, window], topk)
        if torch.is_grad_enabled():
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_scores, *args, use_reentrant=False))
        else:
            parts.append(_chunk_scores(*args))
    logprobs, gathered, in_vocab = zip(*parts, strict=True)
    return CompletionScores(
        logprobs_B_T=torch.cat(logprobs, dim=1),
        topk_logits_B_T_K=None if topk_ids_B_T_K is None else torch.cat(gathered, dim=1),
        in_vocab_B_T_K=None if topk_ids_B_T_K is None else torch.cat(in_vocab, dim=1),
        token_ids_B_T=token_ids_B_T,
        mask_B_T=mask_B_T,
    )


def _chunk_scores(
    head: torch.nn.Module,
    hidden_B_C_H: torch.Tensor,
    token_ids_B_C: torch.Tensor,
    topk_ids_B_C_K: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    logits_B_C_V = head(hidden_B_C_H)
    wide = torch.promote_types(logits_B_C_V.dtype, torch.float32)
    logsumexp_B_C = torch.logsumexp(logits_B_C_V.to(wide), dim=-1)
    logprobs_B_C = logits_B_C_V.gather(-1, token_ids_B_C.unsqueeze(-1)).squeeze(-1).to(wide) - logsumexp_B_C
    if topk_ids_B_C_K is None:
        return logprobs_B_C, None, None
    gathered_B_C_K, in_vocab_B_C_K = losses.gather_topk(logits_B_C_V, topk_ids_B_C_K)
    return logprobs_B_C, gathered_B_C_K, in_vocab_B_C_K
