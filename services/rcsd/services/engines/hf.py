"""The transformers engine: the exactness reference and the CPU fallback.

Scoring computes a group's shared context once and reuses its KV cache for every
completion, so a group of G completions costs one context pass instead of G.
All torch work runs on one worker thread; the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rcsd.client.protocol import ModelInfo
from rcsd.services.engines.base import (
    Engine,
    EngineConfig,
    GenerationParams,
    ScoredTokens,
    with_chosen_dtype,
)
from rcsd.services.engines.identity import model_revision, tokenizer_hash

LOGITS_BUDGET_BYTES = 256 * 2**20  # bounds memory of one forward's float32 logits
# bounds one forward's activations, and how long a cancelled request keeps the worker (it stops
# between forwards); binds only for small vocabularies, where the logits budget alone allows more
MAX_WINDOW_TOKENS = 4096
LOG_SOFTMAX_ROWS = 64  # rows normalised at once: logsumexp's temporary stays small
BATCH_WINDOW_S = 0.01  # how long a generate call waits for others to batch with
MAX_GENERATE_BATCH = 32
MAX_SCORE_BATCH = 16  # completions sharing one expanded copy of the context cache
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _log_softmax(logits_N_V: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) in float32, computed in place: a window's logits become its log-probs
    without a second full-size copy (only a model computing in lower precision gets one: the cast)."""
    x_N_V = logits_N_V.float()
    if temperature != 1.0:
        x_N_V.div_(temperature)
    rows_R_V = x_N_V.view(-1, x_N_V.shape[-1])
    for start in range(0, rows_R_V.shape[0], LOG_SOFTMAX_ROWS):
        block_R_V = rows_R_V[start : start + LOG_SOFTMAX_ROWS]
        block_R_V.sub_(torch.logsumexp(block_R_V, dim=-1, keepdim=True))
    return x_N_V


class ScoringCancelled(Exception):
    """Raised on the worker thread when a scoring call's cancel flag is set."""


class _SeededGumbelSampler(LogitsProcessor):
    """Samples each row from softmax(logits / T), cut by its top_k and top_p, with its own seeded generator.

    Adding Gumbel noise and taking the argmax is exact sampling; with one generator per
    row a request's output does not depend on what it was batched with.
    """

    def __init__(self, params: list[GenerationParams]) -> None:
        self.params = params
        self.generators = [
            torch.Generator().manual_seed(p.seed if p.seed is not None else random.getrandbits(63))
            for p in params
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        for row, (params, generator) in enumerate(zip(self.params, self.generators, strict=True)):
            if params.temperature > 0:
                uniform = torch.rand(scores.shape[-1], generator=generator).clamp_(1e-10, 1.0)
                # Shifted so the best allowed token is 0: dividing by a tiny T then cannot overflow to
                # inf (found by fuzzing: T=5e-118 sampled a token the grammar had masked).
                shifted = scores[row] - scores[row].max()
                kept = top_k_top_p(shifted / params.temperature, params.top_k, params.top_p)
                scores[row] = kept - torch.log(-torch.log(uniform)).to(scores.device)
        return scores


def top_k_top_p(logits_V: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`logits_V` (already divided by the temperature) with the tokens top_k and then top_p drop set
    to -inf: top_p is taken of the distribution top_k leaves, as vLLM and transformers do. Ties at
    the k-th logit are kept, and top_p keeps at least one token. 0 and 1.0 switch them off."""
    logits_1_V = logits_V[None]
    if top_k > 0:
        logits_1_V = TopKLogitsWarper(top_k)(None, logits_1_V)
    if top_p < 1.0:
        logits_1_V = TopPLogitsWarper(top_p)(None, logits_1_V)
    return logits_1_V[0]


@dataclass
class _PendingGeneration:
    prompt_ids: list[int]
    params: GenerationParams
    future: asyncio.Future[str] = field(repr=False)

    def __post_init__(self) -> None:
        # set on the event loop when the caller gives up (its client went away); read by the worker
        self.cancelled = threading.Event()
        self.future.add_done_callback(lambda f: f.cancelled() and self.cancelled.set())


class _AllCancelled(StoppingCriteria):
    """Stops a generation batch once every caller in it has been cancelled. (Not row by row: a
    stopped row would feed pad tokens to its grammar matcher.)"""

    def __init__(self, batch: list[_PendingGeneration]) -> None:
        self.batch = batch

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        stop = all(p.cancelled.is_set() for p in self.batch)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class HfEngine(Engine):
    name = "hf"

    def __init__(self, config: EngineConfig, model: Any, tokenizer: Any, info: ModelInfo) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcsd-hf")
        self._pending: list[_PendingGeneration] = []
        self._batcher: asyncio.Task[None] | None = None
        self._grammar_compiler: Any = None

    @classmethod
    async def load(cls, config: EngineConfig) -> HfEngine:
        return await asyncio.to_thread(cls._load_sync, config)

    @classmethod
    def _load_sync(cls, config: EngineConfig) -> HfEngine:
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        config = with_chosen_dtype(config, device)
        dtype = TORCH_DTYPES.get(config.dtype, "auto")
        tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision)
        model = AutoModelForCausalLM.from_pretrained(config.model, revision=config.revision, dtype=dtype)
        if config.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, config.adapter).merge_and_unload()
        model.to(device).eval()
        info = ModelInfo(
            name=config.model.rstrip("/").split("/")[-1],
            revision=model_revision(config.model, config.revision, config.adapter),
            tokenizer_hash=tokenizer_hash(tokenizer),
            vocab_size=model.get_output_embeddings().weight.shape[0],
            max_model_len=config.max_model_len or model.config.max_position_embeddings,
            dtype=str(model.dtype).removeprefix("torch."),
        )
        return cls(config, model, tokenizer, info)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # ---- scoring -------------------------------------------------------------------------------

    async def score(
        self, context_ids: list[int], completions: list[list[int]], top_k: int, temperature: float
    ) -> list[ScoredTokens]:
        """On cancellation (the client went away) the worker stops at its next window, and this
        returns only once it has: the caller's slot is not freed while the worker still computes."""
        cancel = threading.Event()
        work = asyncio.get_running_loop().run_in_executor(
            self._worker, self.score_sync, context_ids, completions, top_k, temperature, True, cancel
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.gather(work, return_exceptions=True)
            raise

    @torch.inference_mode()
    def score_sync(
        self,
        context_ids: list[int],
        completions: list[list[int]],
        top_k: int,
        temperature: float,
        share_prefix: bool = True,
        cancel: threading.Event | None = None,
    ) -> list[ScoredTokens]:
        """Scores completions; `share_prefix=False` runs each full sequence (the plain path).

        `cancel` is checked between forwards; once set, the work stops with `ScoringCancelled`.
        """
        cancel = cancel or threading.Event()
        if cancel.is_set():  # cancelled while it waited for the worker
            raise ScoringCancelled("the request was cancelled")
        if not share_prefix:
            return [self._score_full(context_ids, c, top_k, temperature) for c in completions]
        device = self.model.device
        # Only the last context row is needed (it predicts token 0): logits_to_keep=1 skips the
        # lm_head for every other row, so an 8k context costs one vocab row, not 8k of them.
        prefix = self.model(torch.tensor([context_ids], device=device), use_cache=True, logits_to_keep=1)
        first_logprobs_1_V = _log_softmax(prefix.logits[0, -1:], temperature)
        results: list[ScoredTokens] = []
        for start in range(0, len(completions), MAX_SCORE_BATCH):
            chunk = completions[start : start + MAX_SCORE_BATCH]
            results.extend(
                self._score_chunk(
                    prefix.past_key_values, first_logprobs_1_V, chunk, top_k, temperature, cancel
                )
            )
        return results

    def _score_chunk(
        self,
        prefix_cache: Any,
        first_logprobs_1_V: torch.Tensor,
        chunk: list[list[int]],
        top_k: int,
        temperature: float,
        cancel: threading.Event,
    ) -> list[ScoredTokens]:
        """Feeds tokens 0..T-2 after the cached context, in windows that bound the logits' memory.

        Logits at fed position t predict token t+1. Right padding is harmless: causal
        attention never lets a real token see a pad, and pad positions are dropped.
        """
        batch, vocab = len(chunk), first_logprobs_1_V.shape[-1]
        longest = max(len(c) for c in chunk)
        pad = self.tokenizer.pad_token_id or 0
        targets_B_T = torch.tensor([c + [pad] * (longest - len(c)) for c in chunk], device=self.model.device)
        scores = [_select(first_logprobs_1_V.expand(batch, 1, vocab), targets_B_T[:, :1], top_k)]
        if longest > 1:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
            window = max(1, min(LOGITS_BUDGET_BYTES // (4 * vocab * batch), MAX_WINDOW_TOKENS // batch))
            for start in range(0, longest - 1, window):
                if cancel.is_set():
                    raise ScoringCancelled("the request was cancelled")
                feed_B_W = targets_B_T[:, start : min(start + window, longest - 1)]
                # the cache grows in place; only the logits are taken, and dropped before the next
                # forward, so one window's logits are alive at a time
                logits_B_W_V = self.model(feed_B_W, past_key_values=cache, use_cache=True).logits
                next_B_W = targets_B_T[:, start + 1 : start + 1 + feed_B_W.shape[1]]
                scores.append(_select(_log_softmax(logits_B_W_V, temperature), next_B_W, top_k))
                del logits_B_W_V
        chosen_B_T, topk_ids_B_T_K, topk_logprobs_B_T_K = (
            torch.cat(parts, dim=1) if parts[0] is not None else None for parts in zip(*scores, strict=True)
        )
        return [
            _to_scored(row, len(c), chosen_B_T, topk_ids_B_T_K, topk_logprobs_B_T_K)
            for row, c in enumerate(chunk)
        ]

    def _score_full(
        self, context_ids: list[int], completion: list[int], top_k: int, temperature: float
    ) -> ScoredTokens:
        ids = torch.tensor([context_ids + completion], device=self.model.device)
        # the rows from the last context token on: T + 1 rows, the last predicts past the end
        logits_1_T_V = self.model(ids, logits_to_keep=len(completion) + 1).logits[:, :-1]
        targets_1_T = torch.tensor([completion], device=self.model.device)
        chosen, topk_ids, topk_logprobs = _select(_log_softmax(logits_1_T_V, temperature), targets_1_T, top_k)
        return _to_scored(0, len(completion), chosen, topk_ids, topk_logprobs)

    # ---- generation ----------------------------------------------------------------------------

    async def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[str]:
        loop = asyncio.get_running_loop()
        pending = [_PendingGeneration(p, params, loop.create_future()) for p in prompts]
        self._pending.extend(pending)
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*(p.future for p in pending)))

    async def _drain(self) -> None:
        """Runs what is waiting in batches that share a JSON schema."""
        while self._pending:
            await asyncio.sleep(BATCH_WINDOW_S)
            schema_key = _schema_key(self._pending[0].params)
            batch = [p for p in self._pending if _schema_key(p.params) == schema_key][:MAX_GENERATE_BATCH]
            self._pending = [p for p in self._pending if p not in batch]
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            try:
                texts = await self._run(self._generate_sync, batch)
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, text in zip(batch, texts, strict=True):
                if not p.future.done():
                    p.future.set_result(text)

    @torch.inference_mode()
    def _generate_sync(self, batch: list[_PendingGeneration]) -> list[str]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p.prompt_ids) for p in batch)
        ids_B_L = torch.tensor([[pad] * (width - len(p.prompt_ids)) + p.prompt_ids for p in batch])
        mask_B_L = torch.tensor([[0] * (width - len(p.prompt_ids)) + [1] * len(p.prompt_ids) for p in batch])
        processors = LogitsProcessorList()
        schema = batch[0].params.json_schema
        if schema is not None:
            import xgrammar

            grammar = compile_json_grammar(self._compiler(), schema)
            processors.append(xgrammar.contrib.hf.LogitsProcessor(grammar))
        processors.append(_SeededGumbelSampler([p.params for p in batch]))
        max_tokens = max(p.params.max_tokens for p in batch)
        out_B_L = self.model.generate(
            input_ids=ids_B_L.to(self.model.device),
            attention_mask=mask_B_L.to(self.model.device),
            max_new_tokens=max_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_AllCancelled(batch)]),
            pad_token_id=pad,
        )
        texts = []
        for row, p in enumerate(batch):
            new_ids = out_B_L[row, width : width + p.params.max_tokens].tolist()
            texts.append(self.tokenizer.decode(new_ids, skip_special_tokens=True))
        return texts

    def _compiler(self) -> Any:
        if self._grammar_compiler is None:
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.info.vocab_size)
            self._grammar_compiler = xgrammar.GrammarCompiler(info)
        return self._grammar_compiler

    async def aclose(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def compile_json_grammar(compiler: Any, schema: dict[str, Any]) -> Any:
    """The grammar of compact JSON admitted by `schema`: no whitespace between tokens, as vLLM's
    structured outputs write it (`disable_any_whitespace`), so both backends emit the same text."""
    return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))


def _schema_key(params: GenerationParams) -> str | None:
    return None if params.json_schema is None else json.dumps(params.json_schema, sort_keys=True)


def _select(
    logprobs_B_W_V: torch.Tensor, targets_B_W: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The log-prob of each target token, and the top-k entries, for one window."""
    chosen_B_W = logprobs_B_W_V.gather(-1, targets_B_W[..., None])[..., 0]
    if top_k == 0:
        return chosen_B_W, None, None
    values_B_W_K, indices_B_W_K = logprobs_B_W_V.topk(top_k, dim=-1)
    return chosen_B_W, indices_B_W_K, values_B_W_K


def _to_scored(
    row: int,
    length: int,
    chosen_B_T: torch.Tensor,
    topk_ids_B_T_K: torch.Tensor | None,
    topk_logprobs_B_T_K: torch.Tensor | None,
) -> ScoredTokens:
    def take(tensor: torch.Tensor | None, dtype: type[np.generic]) -> np.ndarray | None:
        return None if tensor is None else tensor[row, :length].cpu().numpy().astype(dtype)

    return ScoredTokens(
        logprobs_T=take(chosen_B_T, np.float32),
        topk_ids_T_K=take(topk_ids_B_T_K, np.int32),
        topk_logprobs_T_K=take(topk_logprobs_B_T_K, np.float32),
    )
