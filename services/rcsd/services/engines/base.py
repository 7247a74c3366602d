"""The engine interface both services use: score token ids, generate text.

Two implementations: `hf` (transformers; the exactness reference and CPU fallback)
and `vllm` (production). Services talk only to this interface.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcsd.client.protocol import ModelInfo
from rcsd.loading.dtype import choose_dtype

logger = logging.getLogger("rcsd.engine")


@dataclass(frozen=True)
class ScoredTokens:
    """Teacher scores of one completion (T tokens, K top entries)."""

    logprobs_T: np.ndarray  # float32 [T]: log p(token_t | context, tokens_<t)
    topk_ids_T_K: np.ndarray | None  # int32 [T, K], sorted by log-prob, descending
    topk_logprobs_T_K: np.ndarray | None  # float32 [T, K]


class UnsupportedParameter(ValueError):
    """A request parameter this engine cannot honour: the client's to fix, so a 4xx."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class EngineUnavailable(RuntimeError):
    """The engine died or cannot take work: a 503, and the service stops being ready."""


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how; built from a service's settings."""

    model: str  # a local folder or a Hugging Face model id
    revision: str | None = None
    dtype: str = "auto"  # "auto" (see rcsd.loading.dtype), "float32", "bfloat16", "float16"
    max_model_len: int | None = None  # None: the model's own
    device: str = "auto"  # hf backend: "cpu", "cuda", "auto"
    adapter: str | None = None  # a LoRA adapter folder served on top of `model`
    max_top_k: int = 64  # the largest top_k a request may ask for
    kv_cache_gb: float = 2.0  # vllm on CPU: the KV cache (a VLLM_CPU_KVCACHE_SPACE env var wins)
    gpu_memory_utilization: float = 0.85  # vllm on GPU
    max_num_seqs: int = 64  # vllm: sequences scheduled together
    tensor_parallel_size: int = 1  # vllm: GPUs each layer is split over
    pipeline_parallel_size: int = 1  # vllm: stages of consecutive layers (GPUs = tensor x pipeline)
    seed: int = 0


def with_chosen_dtype(config: EngineConfig, device: str) -> EngineConfig:
    """`config` with `dtype="auto"` resolved for `device` (rcsd.loading.dtype), the reason logged."""
    choice = choose_dtype(config.dtype, device)
    logger.info("dtype %s: %s", choice.dtype, choice.reason)
    return dataclasses.replace(config, dtype=choice.dtype)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling of one generate call. After the temperature, `top_k` keeps the k likeliest tokens
    (0: off), then `top_p` the fewest whose probability sums to at least p (1.0: off), as vLLM and
    transformers order them; `temperature=0` is greedy and ignores both."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # constrain the output to this schema


class Engine(abc.ABC):
    """A loaded model. Every method is async and never blocks the event loop."""

    name: str  # "hf" or "vllm"
    info: ModelInfo
    tokenizer: Any  # a transformers tokenizer: templates are rendered with it

    @abc.abstractmethod
    async def score(
        self, context_ids: list[int], completions: list[list[int]], top_k: int, temperature: float
    ) -> list[ScoredTokens]:
        """Score each completion as a continuation of the shared context.

        `temperature` divides the logits before the log-softmax (1.0 = the model as is).
        """

    @abc.abstractmethod
    async def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[str]:
        """Generate one text per prompt (token ids of an already-rendered chat prompt)."""

    def is_alive(self) -> bool:
        """False once the engine has died; /ready then answers 503 so clients go elsewhere."""
        return True

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the model; safe to call twice."""
