"""The vLLM engine: production scoring and generation on an in-process `AsyncLLM` (vLLM 0.32).

API used: `AsyncEngineArgs` -> `vllm.v1.engine.async_llm.AsyncLLM.from_engine_args`;
requests are `vllm.inputs.tokens_input(ids)` (token ids, never text) with `SamplingParams`;
scoring reads `prompt_logprobs` as `FlatLogprobs` (`flat_logprobs=True`, `detokenize=False`);
JSON is constrained by `StructuredOutputsParams(json=...)`.

Adapters. vLLM 0.32's LoRA path cannot score prompt tokens: its LoRA logits processor indexes
the prompt rows with one LoRA slot per request, and the CPU engine core dies with an einsum
shape error (vllm#29955, #16668; on GPU an lm_head delta is dropped from prompt log-probs,
vllm#51594). So `config.adapter` is merged into the base weights once (peft
`merge_and_unload`, as the hf engine does), cached on disk, and served as a plain model: exact
for scoring and generation alike, and no LoRA kernels in the hot path.

Temperature. Prompt log-probs in vLLM 0.32 are the raw model's: prompt rows never go through
the sampler's processors, so `SamplingParams.temperature` does not touch them, and the engine
arg `logprobs_mode="processed_logprobs"` gives the same numbers as "raw_logprobs" for prompt
rows (vllm/config/model.py says so, and we measured it). log_softmax(logits / T) cannot be
rebuilt from the top-k either (its normaliser needs the whole vocabulary), so `score` refuses
temperature != 1.0 with `UnsupportedParameter` (a ValueError whose `field` is "temperature").

Prefix sharing. `SamplingParams` sets `skip_reading_prefix_cache=True` whenever prompt
log-probs are asked for, because a cache hit leaves the cached rows unscored: the V1 model
runner (CPU, and GPU without Triton) returns them as uninitialised memory, the V2 runner
omits them. Only rows from the request's `num_cached_tokens` on are computed. We only need
the completion's rows (from row L-1, L = len(context)), so a group reads the cache anyway
and a request is trusted when its hit ends at or before L-1. Hits are block-aligned, so:
- when L is a multiple of the block size, every sibling hits exactly L and misses row L-1
  (the distribution after the context, the same for every completion). That row comes from
  a "primer" request: prompt = context, greedy one-token generation with `allowed_token_ids=[t]`
  and `logprobs=max_top_k`, whose raw sample log-probs are t's log-prob and the top-k after the
  context; a first token outside that top-k gets a primer of its own. (Not `logprob_token_ids`:
  vLLM 0.32 returns those to every request of a batch step, replacing their top-k.) A primer
  recomputes at most one block;
- a completion that shares enough leading tokens with a sibling to reach the next block
  boundary would miss rows it cannot get back, so it is scored without reading the cache;
- the primer runs first, alone: it computes the context once and fills the prefix cache, so
  the siblings sent after it find the context there instead of each computing it;
- anything else (a hit from another group, a preemption) is caught by checking
  `num_cached_tokens` and `metrics.num_preemptions`, and the completion is scored again
  without reading the cache.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections import Counter
from typing import Any

import numpy as np
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.config import ModelConfig, StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import tokens_input
from vllm.logprobs import FlatLogprobs
from vllm.outputs import RequestOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from rcsd.client.protocol import ModelInfo
from rcsd.loading.bundled import default_cache_dir
from rcsd.services.engines.base import (
    Engine,
    EngineConfig,
    EngineUnavailable,
    GenerationParams,
    ScoredTokens,
    UnsupportedParameter,
    with_chosen_dtype,
)
from rcsd.services.engines.identity import model_revision, tokenizer_hash
from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env

GiB = 2**30
DEFAULT_BLOCK_SIZE = 16  # when the front end does not know the attention backend's block size

_Rows = tuple[np.ndarray, np.ndarray]  # int32 ids and float32 log-probs, [rows, 1 + top_k]


class VllmEngine(Engine):
    name = "vllm"

    def __init__(
        self, llm: AsyncLLM, config: EngineConfig, tokenizer: Any, info: ModelInfo, block_size: int
    ) -> None:
        self.llm = llm
        self.config = config
        self.tokenizer = tokenizer
        self.info = info
        self.block_size = block_size
        self._closed = False

    @classmethod
    async def load(cls, config: EngineConfig) -> VllmEngine:
        """Starts the engine core (a child process) off the event loop; ~18 s for a tiny CPU model."""
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            _set_cpu_env_defaults()
        config = with_chosen_dtype(config, "cpu" if on_cpu else "cuda")
        served = config.model
        if config.adapter:
            served = await asyncio.to_thread(merged_adapter_folder, config)
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args(config, on_cpu, served))
        try:
            tokenizer, info = await asyncio.to_thread(_identity, config, llm.model_config)
        except BaseException:
            llm.shutdown()
            raise
        block_size = llm.vllm_config.cache_config.block_size or DEFAULT_BLOCK_SIZE
        return cls(llm, config, tokenizer, info, block_size)

    # ---- scoring -------------------------------------------------------------------------------

    async def score(
        self, context_ids: list[int], completions: list[list[int]], top_k: int, temperature: float
    ) -> list[ScoredTokens]:
        """Scores every completion as a continuation of the context, all submitted at once."""
        if temperature != 1.0:
            raise UnsupportedParameter(
                "temperature",
                f"the vllm backend scores at temperature 1.0 only (vLLM's prompt log-probs are "
                f"taken before temperature); got {temperature}",
            )
        if not 0 <= top_k <= self.config.max_top_k:
            raise UnsupportedParameter("top_k", f"must be in [0, {self.config.max_top_k}], got {top_k}")
        if not context_ids:
            raise UnsupportedParameter("context_ids", "the context must hold at least one token")
        reuse = _may_read_cache(len(context_ids), completions, self.block_size)
        first_tokens = Counter(c[0] for c, ok in zip(completions, reuse, strict=True) if ok and c)
        # The context is computed once, by the primer, before the siblings are sent: sent together,
        # each would find the cache still empty and compute the whole context itself. The primer
        # also yields row L-1, which a sibling whose cache hit covers the whole context leaves out.
        first_rows = await self._first_rows(context_ids, first_tokens, top_k) if first_tokens else None
        return list(
            await asyncio.gather(
                *(
                    self._score_one(context_ids, c, top_k, ok, first_rows)
                    for c, ok in zip(completions, reuse, strict=True)
                )
            )
        )

    async def _score_one(
        self,
        context_ids: list[int],
        completion: list[int],
        top_k: int,
        read_cache: bool,
        first_rows: dict[int, _Rows] | None,
    ) -> ScoredTokens:
        if not completion:
            return _scored(np.zeros((0, top_k + 1), np.int32), np.zeros((0, top_k + 1), np.float32), top_k)
        length = len(context_ids)
        out = await self._final(context_ids + completion, _score_params(top_k, read_cache), "score")
        first_row = length - 1  # row r holds the distribution of token r+1
        if read_cache:
            cached = out.num_cached_tokens or 0
            preempted = _maybe_preempted(out)
            if cached == length and first_rows is not None and not preempted:
                first_row = length
            elif cached > length - 1 or preempted:  # rows we need were never computed
                out = await self._final(context_ids + completion, _score_params(top_k, False), "score")
        ids_T_W, logprobs_T_W = _prompt_rows(out, len(context_ids) + len(completion) - 1 - first_row, top_k)
        if first_row == length:
            assert first_rows is not None
            primer_ids_1_W, primer_logprobs_1_W = first_rows[completion[0]]
            ids_T_W = np.concatenate([primer_ids_1_W, ids_T_W])
            logprobs_T_W = np.concatenate([primer_logprobs_1_W, logprobs_T_W])
        if not np.array_equal(ids_T_W[:, 0], completion):
            raise RuntimeError("vLLM prompt log-probs are misaligned with the completion tokens")
        return _scored(ids_T_W, logprobs_T_W, top_k)

    async def _first_rows(
        self, context_ids: list[int], first_tokens: Counter[int], top_k: int
    ) -> dict[int, _Rows]:
        """Row L-1 (ids and log-probs, [1, 1 + top_k]) for each first token of the group.

        One primer, forced to the commonest first token, returns the top max_top_k after the
        context; a first token outside it costs a primer of its own.
        """
        common = first_tokens.most_common(1)[0][0]
        ids_1_W, logprobs_1_W = await self._primer(context_ids, common, self.config.max_top_k)
        known = {common: float(logprobs_1_W[0, 0])}
        for token, logprob in zip(ids_1_W[0, 1:].tolist(), logprobs_1_W[0, 1:].tolist(), strict=True):
            known.setdefault(token, logprob)
        missing = [t for t in first_tokens if t not in known]
        for token, (_, row_1_W) in zip(
            missing, await asyncio.gather(*(self._primer(context_ids, t, 0) for t in missing)), strict=True
        ):
            known[token] = float(row_1_W[0, 0])
        top_ids, top_logprobs = ids_1_W[0, 1 : 1 + top_k], logprobs_1_W[0, 1 : 1 + top_k]
        return {
            t: (
                np.concatenate([[t], top_ids]).astype(np.int32)[None],
                np.concatenate([[known[t]], top_logprobs]).astype(np.float32)[None],
            )
            for t in first_tokens
        }

    async def _primer(self, context_ids: list[int], token: int, top_k: int) -> _Rows:
        """Greedy one-token generation forced to `token`: its raw log-prob and the top-k after the context."""
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            allowed_token_ids=[token],  # forces the sampled token; log-probs stay raw
            logprobs=top_k,
            detokenize=False,
            flat_logprobs=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        out = await self._final(context_ids, params, "primer")
        row = out.outputs[0].logprobs
        assert isinstance(row, FlatLogprobs) and len(row) == 1
        return _flat_rows(row, 1, top_k + 1)

    # ---- generation ----------------------------------------------------------------------------

    async def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[str]:
        structured = None
        if params.json_schema is not None:
            structured = StructuredOutputsParams(json=params.json_schema)
        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,  # 0 is off in vLLM too
            seed=params.seed,
            structured_outputs=structured,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        outs = await asyncio.gather(*(self._final(p, sampling, "generate") for p in prompts))
        return [out.outputs[0].text for out in outs]

    async def _final(self, prompt_ids: list[int], params: SamplingParams, kind: str) -> RequestOutput:
        final = None
        request_id = f"{kind}-{uuid.uuid4().hex}"
        try:
            async for out in self.llm.generate(tokens_input(prompt_ids), params, request_id):
                final = out
        except EngineDeadError as exc:
            raise EngineUnavailable(f"the vLLM engine died: {exc}") from exc
        assert final is not None and final.finished
        return final

    def is_alive(self) -> bool:
        return not self.llm.errored

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.llm.output_handler is not None:  # else it logs the engine core's exit as an error
            self.llm.output_handler.cancel()
        await asyncio.to_thread(self.llm.shutdown)


def engine_args(config: EngineConfig, on_cpu: bool, served: str) -> AsyncEngineArgs:
    """`served` is `config.model`, or the folder `merged_adapter_folder` wrote."""
    memory: dict[str, Any] = (
        {"kv_cache_memory_bytes": int(config.kv_cache_gb * GiB)}
        if on_cpu
        else {"gpu_memory_utilization": config.gpu_memory_utilization}
    )
    return AsyncEngineArgs(
        model=served,
        revision=None if config.adapter else config.revision,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        seed=config.seed,
        max_logprobs=config.max_top_k + 1,
        logprobs_mode="raw_logprobs",  # `score` and the primers rely on raw log-probs
        enable_prefix_caching=True,
        max_num_seqs=config.max_num_seqs,
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        enforce_eager=on_cpu,
        # vLLM 0.32 on CPU: a seeded request whose prompt is split across steps kills the engine
        # core ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync rewinds
        # the generator of a partial prefill). Whole prompts per step avoid the rewind.
        enable_chunked_prefill=not on_cpu,
        disable_log_stats=False,  # keeps RequestOutput.metrics, where preemptions are counted
        # No free whitespace in constrained JSON: a weak model otherwise emits blanks until
        # max_tokens. vLLM 0.32 reads this flag from the engine config only, not per request.
        structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        **memory,
    )


def _set_cpu_env_defaults() -> None:
    """The vLLM CPU settings this project needs, unless the operator chose otherwise."""
    for name, value in vllm_cpu_env().items():
        os.environ.setdefault(name, value)


def merged_adapter_folder(config: EngineConfig) -> str:
    """The base model with `config.adapter` merged in, written once under the cache directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cache = default_cache_dir()
    # The revision holds the adapter's content hash: another adapter, or new weights at the same path,
    # is another folder.
    revision = model_revision(config.model, config.revision, config.adapter)
    target = cache / "merged" / f"{config.model.rstrip('/').split('/')[-1]}+{revision.replace(':', '-')}"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=".merging-", ignore_cleanup_errors=True
    ) as scratch:
        model = AutoModelForCausalLM.from_pretrained(config.model, revision=config.revision, dtype="auto")
        model = PeftModel.from_pretrained(model, config.adapter).merge_and_unload()
        model.save_pretrained(scratch)
        AutoTokenizer.from_pretrained(config.model, revision=config.revision).save_pretrained(scratch)
        try:  # written whole, then renamed: a killed run leaves nothing half-written behind
            os.rename(scratch, target)
        except OSError:  # another process merged it first
            if not (target / "config.json").is_file():
                raise
    return str(target)


def _identity(config: EngineConfig, model_config: ModelConfig) -> tuple[Any, ModelInfo]:
    tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision)
    info = ModelInfo(
        name=config.model.rstrip("/").split("/")[-1],  # as the hf engine names it
        revision=model_revision(config.model, config.revision, config.adapter),
        tokenizer_hash=tokenizer_hash(tokenizer),
        vocab_size=model_config.get_vocab_size(),
        max_model_len=model_config.max_model_len,
        dtype=str(model_config.dtype).removeprefix("torch."),
    )
    return tokenizer, info


def _may_read_cache(length: int, completions: list[list[int]], block_size: int) -> list[bool]:
    """False for a completion whose sibling shares its tokens up to the next block boundary.

    Such a request would hit the cache past row L-1 and miss completion rows.
    """
    reach = (length // block_size + 1) * block_size - length  # completion tokens to the boundary
    prefixes = Counter(tuple(c[:reach]) for c in completions if len(c) >= reach)
    return [not (len(c) > reach and prefixes[tuple(c[:reach])] > 1) for c in completions]


def _maybe_preempted(out: RequestOutput) -> bool:
    """True unless the metrics say no preemption: without them, a read of the cache is not trusted."""
    return out.metrics is None or out.metrics.num_preemptions > 0


def _score_params(top_k: int, read_cache: bool) -> SamplingParams:
    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=top_k,
        skip_reading_prefix_cache=not read_cache,
        detokenize=False,
        flat_logprobs=True,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def _prompt_rows(out: RequestOutput, count: int, top_k: int) -> _Rows:
    """The last `count` prompt rows; counting from the end works for both model runners."""
    rows = out.prompt_logprobs
    assert isinstance(rows, FlatLogprobs) and len(rows) - 1 >= count
    return _flat_rows(rows, count, top_k + 1)


def _flat_rows(rows: FlatLogprobs, count: int, width: int) -> _Rows:
    """[count, width] ids and log-probs: column 0 the scored token, then the top-k, descending."""
    if count == 0:
        return np.zeros((0, width), np.int32), np.zeros((0, width), np.float32)
    start, end = rows.start_indices[len(rows) - count], rows.end_indices[-1]
    if end - start != count * width:
        raise RuntimeError(f"vLLM returned {end - start} log-probs for {count} rows of {width}")
    ids_N_W = np.asarray(rows.token_ids[start:end], dtype=np.int32).reshape(count, width)
    logprobs_N_W = np.asarray(rows.logprobs[start:end], dtype=np.float32).reshape(count, width)
    return ids_N_W, logprobs_N_W


def _scored(ids_T_W: np.ndarray, logprobs_T_W: np.ndarray, top_k: int) -> ScoredTokens:
    return ScoredTokens(
        logprobs_T=np.ascontiguousarray(logprobs_T_W[:, 0]),
        topk_ids_T_K=np.ascontiguousarray(ids_T_W[:, 1:]) if top_k else None,
        topk_logprobs_T_K=np.ascontiguousarray(logprobs_T_W[:, 1:]) if top_k else None,
    )
