"""The student: loading it (dtype, LoRA or full weights, from a checkpoint) and its logits on completions.

The logits are taken on exactly the positions the teacher scored: the context is the student's
prompt and the completion the sampled ids, so row t of `completion_logits` predicts completion
token t, as `token_ids[t]` / `logprobs[t]` do in a teacher response.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rcsd.loading.dtype import choose_dtype
from rcsd.trainer import checkpoint as ckpt
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


def completion_logits(
    model: Any, prompt_ids: list[int], completions: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits predicting each completion token, for completions sharing one prompt.

    Returns `logits_B_T_V` (row t predicts token t), `token_ids_B_T` (padded with `pad_id`) and
    `mask_B_T` (True on real tokens); T is the longest completion.
    """
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
    # positions P-1 .. P+T-2 predict completion tokens 0 .. T-1; padding sits after every real token
    logits_B_L_V = model(input_ids=input_B_L[:, :-1], attention_mask=attention_B_L[:, :-1]).logits
    return logits_B_L_V[:, P - 1 :], token_ids_B_T.to(device), mask_B_T.to(device)


def sampled_logprobs(logits_B_T_V: torch.Tensor, token_ids_B_T: torch.Tensor) -> torch.Tensor:
    """log q(token_t) at temperature 1, in float32 (with gradients if the logits have them)."""
    return logits_B_T_V.float().log_softmax(-1).gather(-1, token_ids_B_T.unsqueeze(-1)).squeeze(-1)
