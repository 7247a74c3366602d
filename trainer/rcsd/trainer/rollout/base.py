"""What every rollout engine takes and gives: sampling settings, one sampled answer, the engine interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """How the student samples. `temperature=0` is greedy; `top_k=0` and `top_p=1` switch those cuts off.

    The defaults are the released method's (tau 1.2, top_p 0.95, top_k 20). `seed` makes a call
    reproducible: the same prompts, params and weights give the same tokens on the same engine.
    """

    max_new_tokens: int
    temperature: float = 1.2
    top_p: float = 0.95
    top_k: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"invalid sampling params {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Rollout:
    """One sampled answer. `completion_ids` are the sampled tokens verbatim, the end-of-turn token
    included when the model wrote one, no padding; `truncated` when `max_new_tokens` ran out first.
    `sampler_logprobs`: the sampler's log-prob of each completion token at temperature 1 (its raw
    logits, before temperature and top-k/top-p), where the engine reports them (vLLM); the trainer
    compares them with its own forward's to measure the sampler mismatch."""

    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool
    sampler_logprobs: list[float] | None = None


class RolloutEngine(Protocol):
    def sample(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> list[list[Rollout]]:
        """`n` rollouts for each prompt (token ids), in the order of `prompts`; seeded by `params.seed`."""
        ...

    def update(self, model: Any) -> None:
        """Follow the student's weights after an optimizer step (`model`: the trainer's student)."""
        ...

    def close(self) -> None: ...
