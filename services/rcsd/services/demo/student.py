"""The student, in the demo's own process: sample one answer per question with transformers.

The student's prompt is the teacher's `none`-mode prompt (the same template, the model's chat
template), so the `none` score of an answer is the student's own log-probability of it. The sampled
token ids are what the teacher scores, verbatim: they are never decoded and encoded again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcsd.models.dtype import choose_dtype
from rcsd.models.prompts import chat_prompt_ids, student_prompt_text, student_template


@dataclass(frozen=True)
class StudentAnswer:
    prompt_ids: list[int]
    token_ids: list[int]  # sampled, including the end-of-turn token when the model wrote one
    text: str  # for people to read; never sent anywhere
    logprobs: list[float]  # the student's own log p(token_t | prompt, tokens_<t), temperature 1


class Student:
    def __init__(self, model_dir: Path, template_version: str = "v1", dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # the demo draws its own progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        chosen = choose_dtype(dtype, self.device).dtype  # bfloat16 only where the CPU has it natively
        self.model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=chosen)
        self.model.to(self.device).eval()
        self.template_version = template_version
        student_template(template_version)  # an unknown version fails here, not at the first question

    def prompt_ids(self, question: str) -> list[int]:
        """Rendered as the teacher renders its `none` context (both use `rcsd.models.prompts`)."""
        prompt = student_prompt_text(question, self.template_version)
        return chat_prompt_ids(self.tokenizer, [{"role": "user", "content": prompt}])

    def sample(self, question: str, *, max_new_tokens: int, temperature: float, seed: int) -> StudentAnswer:
        import torch

        prompt_ids = self.prompt_ids(question)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt_ids], device=self.device),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=self.device),
                do_sample=True,
                temperature=temperature,
                top_k=0,  # the plain softmax(logits / T): no top-k or top-p cut
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        token_ids = out.sequences[0, len(prompt_ids) :].tolist()
        # generate() pads a sequence that ended early only in a batch; with one row it stops at EOS
        logits_T_V = torch.cat(out.logits, dim=0)[: len(token_ids)].float()
        logprobs_T = torch.log_softmax(logits_T_V, dim=-1).gather(
            1, torch.tensor(token_ids, device=logits_T_V.device).unsqueeze(1)
        )
        return StudentAnswer(
            prompt_ids=prompt_ids,
            token_ids=token_ids,
            text=self.tokenizer.decode(token_ids, skip_special_tokens=True).strip(),
            logprobs=logprobs_T.squeeze(1).tolist(),
        )
