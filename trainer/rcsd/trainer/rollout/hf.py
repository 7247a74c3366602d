"""Rollouts with transformers `generate`, in the trainer's own process, from the student's live weights.

All prompts x n go through `generate` together (in chunks of `max_batch_size` rows), left-padded. The
sampler sees exactly `softmax(logits / temperature)` cut by top-k / top-p: every other logits processor
the checkpoint's generation_config may switch on (repetition penalty, min-p, ...) is pinned off here, so
the rollouts come from the policy the losses assume.
"""

from __future__ import annotations

from typing import Any

import torch

from rcsd.trainer.rollout.base import Rollout, SamplingParams

# Explicit values, so the checkpoint's generation_config cannot fill them in (transformers fills only None).
NEUTRAL_PROCESSORS: dict[str, Any] = {
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
}
NEUTRAL_SAMPLING_WARPERS: dict[str, Any] = {
    "min_p": 0.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


class HfRollout:
    """`RolloutEngine` over a transformers (or peft) causal LM that the trainer also trains."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int | None = None) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.stop_ids = _stop_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)

    def update(self, model: Any) -> None:
        """The same module is sampled from, so its weights are always current; kept for a new object."""
        self.model = model

    def close(self) -> None:
        return None

    def sample(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> list[list[Rollout]]:
        rows = [prompt for prompt in prompts for _ in range(n)]
        chunk = self.max_batch_size or len(rows) or 1
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            # The seed applies to this call only: the trainer's own random stream is left as it was.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(params.seed)
                completions = [
                    c for i in range(0, len(rows), chunk) for c in self._generate(rows[i : i + chunk], params)
                ]
        finally:
            self.model.train(was_training)
        rollouts = [
            Rollout(prompt_ids=list(prompt), completion_ids=ids, truncated=truncated)
            for prompt, (ids, truncated) in zip(rows, completions, strict=True)
        ]
        return [rollouts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate(self, rows: list[list[int]], params: SamplingParams) -> list[tuple[list[int], bool]]:
        device = next(self.model.parameters()).device
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every row's last prompt token is at the same column
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
        sampling = (
            {"do_sample": False}
            if params.greedy
            else {
                "do_sample": True,
                "temperature": params.temperature,
                "top_k": params.top_k,
                "top_p": params.top_p,
                **NEUTRAL_SAMPLING_WARPERS,
            }
        )
        out_N_L = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
            use_cache=True,
            **sampling,
            **NEUTRAL_PROCESSORS,
        )
        return [_cut_at_stop(row[width:].tolist(), self.stop_ids) for row in out_N_L]


def _cut_at_stop(generated: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """The tokens up to and including the first stop token (the rest is padding); truncated if none."""
    for t, token in enumerate(generated):
        if token in stop_ids:
            return generated[: t + 1], False
    return generated, True


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-turn ids: the checkpoint's generation_config eos (an int or a list) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    if not ids:
        raise ValueError("the model and tokenizer name no end-of-sequence token to stop at")
    return ids
