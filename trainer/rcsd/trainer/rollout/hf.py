"""Rollouts with transformers `generate`, in the trainer's own process, from the student's live weights.

All requests x n go through `generate` together (in chunks of `max_batch_size` rows), left-padded, and
each request is yielded as soon as its n rows have stopped (`sample_stream`), so the teacher scores a
group while the others still decode. Every row samples from its own generator, seeded by its request's
seed and its rollout index: a row draws the same tokens whatever else shares its batch, so batched
equals one request at a time (up to the rounding of a padded batch's matmuls, which can flip a draw
that lands on a probability boundary; exact on the float32 tiny model, see tests/trainer/test_rollout.py).
The sampler sees exactly `softmax(logits / temperature)` cut by top-k / top-p: every other logits
processor the checkpoint's generation_config may switch on (repetition penalty, min-p, ...) is pinned
off, so the rollouts come from the policy the losses assume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rcsd.trainer.rollout.base import Rollout, SamplingParams

# Explicit values, so the checkpoint's generation_config cannot fill them in (transformers fills only None).
NEUTRAL_PROCESSORS: dict[str, Any] = {
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
}


@dataclass(frozen=True)
class _Row:
    request: int  # index into the call's requests
    prompt: list[int]
    params: SamplingParams
    seed: int  # this row's own generator seed


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
        """Prompt i's rollout j is seeded by (params.seed, i, j); the caller's RNG is left alone."""
        rows = [
            _Row(i, prompt, params, _row_seed(params.seed, i, j))
            for i, prompt in enumerate(prompts)
            for j in range(n)
        ]
        done = dict(self._stream(rows, n))
        return [done[i] for i in range(len(prompts))]

    def sample_stream(
        self, requests: list[tuple[list[int], SamplingParams]], n: int = 1
    ) -> Iterator[tuple[int, list[Rollout]]]:
        """All requests batched; yields `(index, rollouts)` as each finishes, each equal to
        `sample([prompt], params, n)` called alone."""
        rows = [
            _Row(i, prompt, params, _row_seed(params.seed, 0, j))
            for i, (prompt, params) in enumerate(requests)
            for j in range(n)
        ]
        yield from self._stream(rows, n)

    def _stream(self, rows: list[_Row], n: int) -> Iterator[tuple[int, list[Rollout]]]:
        """`generate` runs in a worker thread and reports each row as it stops; a request is yielded
        once its n rows are in. Closing the iterator early stops the decoding at the next token."""
        finished: queue.Queue[tuple[int, Rollout] | BaseException | None] = queue.Queue()
        cancel = threading.Event()
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling

        device = next(self.model.parameters()).device

        def work() -> None:
            try:
                if device.type == "cuda":  # the current device is per thread: this rank's, not cuda:0
                    torch.cuda.set_device(device)
                with torch.no_grad():
                    for batch in self._batches(rows):
                        self._generate(batch, finished, cancel)
                finished.put(None)
            except BaseException as error:  # re-raised in the caller's thread
                finished.put(error)

        worker = threading.Thread(target=work, name="hf-rollout", daemon=True)
        worker.start()
        got: dict[int, dict[int, Rollout]] = {}  # request -> row index -> its rollout
        try:
            while (item := finished.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                row, rollout = item
                request = rows[row].request
                got.setdefault(request, {})[row] = rollout
                if len(got[request]) == n:  # in rollout order, whichever row stopped first
                    done = got.pop(request)
                    yield request, [done[r] for r in sorted(done)]
        finally:
            cancel.set()
            worker.join()
            self.model.train(was_training)

    def _batches(self, rows: list[_Row]) -> Iterator[list[tuple[int, _Row]]]:
        """Rows with equal settings (the seed apart) in chunks of `max_batch_size`, in request order."""
        by_settings: dict[SamplingParams, list[tuple[int, _Row]]] = {}
        for index, row in enumerate(rows):
            by_settings.setdefault(replace(row.params, seed=0), []).append((index, row))
        for same in by_settings.values():
            chunk = self.max_batch_size or len(same)
            for start in range(0, len(same), chunk):
                yield same[start : start + chunk]

    def _generate(
        self,
        batch: list[tuple[int, _Row]],
        finished: queue.Queue[tuple[int, Rollout] | BaseException | None],
        cancel: threading.Event,
    ) -> None:
        device = next(self.model.parameters()).device
        params = batch[0][1].params
        prompts = [row.prompt for _, row in batch]
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: every row's last prompt token is at one column
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[i, width - len(prompt) :] = 1
        sampler = [] if params.greedy else [_SeededSampler(params, [row.seed for _, row in batch], device)]
        watcher = _FinishWatcher(batch, width, params.max_new_tokens, self.stop_ids, finished, cancel)
        self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=params.max_new_tokens,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
            use_cache=True,
            do_sample=False,  # greedy picks the one token `_SeededSampler` leaves
            logits_processor=LogitsProcessorList(sampler),
            stopping_criteria=[watcher],
            **NEUTRAL_PROCESSORS,
        )
        if watcher.pending:
            raise RuntimeError(f"generate ended with rows {sorted(watcher.pending)} unreported")


class _SeededSampler(LogitsProcessor):
    """Samples every row from its own generator (inverse CDF, one uniform per row per token) and leaves
    only the drawn token, which `generate`'s argmax then takes. A row's draws depend on its seed only."""

    def __init__(self, params: SamplingParams, seeds: list[int], device: torch.device) -> None:
        warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(params.temperature)]
        if params.top_k > 0:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1:
            warpers.append(TopPLogitsWarper(params.top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs_B_V = torch.softmax(self.warpers(input_ids, scores), dim=-1)
        cdf_B_V = probs_B_V.cumsum(dim=-1)
        u_B = torch.cat([torch.rand(1, generator=g, device=scores.device) for g in self.generators])
        # the first token whose cdf exceeds u * total: never a zero-probability one, always in range
        tokens_B = torch.searchsorted(cdf_B_V, (u_B * cdf_B_V[:, -1]).unsqueeze(1), right=True).squeeze(1)
        only_B_V = torch.full_like(scores, float("-inf"))
        return only_B_V.scatter_(1, tokens_B.unsqueeze(1), 0.0)


class _FinishWatcher(StoppingCriteria):
    """Reports each row as it stops (a stop token or `max_new_tokens`); stops everything on `cancel`."""

    def __init__(
        self,
        batch: list[tuple[int, _Row]],
        width: int,
        max_new_tokens: int,
        stop_ids: set[int],
        finished: queue.Queue[tuple[int, Rollout] | BaseException | None],
        cancel: threading.Event,
    ) -> None:
        self.batch, self.width, self.max_new_tokens = batch, width, max_new_tokens
        self.stop_ids, self.finished, self.cancel = stop_ids, finished, cancel
        self.pending = set(range(len(batch)))

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        for i in sorted(self.pending):
            stopped = last[i] in self.stop_ids
            if stopped or generated >= self.max_new_tokens:
                index, row = self.batch[i]
                ids = input_ids[i, self.width :].tolist()
                self.finished.put((index, Rollout(list(row.prompt), ids, truncated=not stopped)))
                self.pending.discard(i)
        stop = self.cancel.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _row_seed(seed: int, prompt: int, rollout: int) -> int:
    """Rollout `rollout` of prompt `prompt` in a call seeded `seed`: its generator's seed."""
    return int(np.random.default_rng([seed, prompt, rollout]).integers(2**63 - 1))


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-turn ids: the checkpoint's generation_config eos (an int or a list) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    if not ids:
        raise ValueError("the model and tokenizer name no end-of-sequence token to stop at")
    return ids
