"""The transformers engine: shared-prefix scoring equals the plain path, in bounded memory."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rcsd.services.engines import hf
from rcsd.services.engines.base import EngineConfig, GenerationParams
from rcsd.services.engines.hf import HfEngine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> HfEngine:
    return asyncio.run(HfEngine.load(EngineConfig(model=str(tiny_model_dir), dtype="float32", device="cpu")))


def _random(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("top_k", [0, 6])
def test_shared_prefix_equals_unshared_and_plain_forward(engine, monkeypatch, top_k):
    # Tiny budgets force several micro-batches and several windows per completion.
    monkeypatch.setattr(hf, "LOGITS_BUDGET_BYTES", 4 * 1000 * 2 * 7)
    monkeypatch.setattr(hf, "MAX_SCORE_BATCH", 2)
    vocab = engine.info.vocab_size
    [context] = _random(vocab, [37], seed=1)
    completions = _random(vocab, [1, 2, 30, 64, 5], seed=2)
    shared = engine.score_sync(context, completions, top_k, 1.3, share_prefix=True)
    unshared = engine.score_sync(context, completions, top_k, 1.3, share_prefix=False)
    for completion, a, b in zip(completions, shared, unshared, strict=True):
        with torch.inference_mode():
            logits = engine.model(torch.tensor([context + completion])).logits[0, len(context) - 1 : -1]
        rows = torch.log_softmax(logits.float() / 1.3, dim=-1)
        expected = rows.gather(-1, torch.tensor(completion)[:, None])[:, 0].numpy()
        assert a.logprobs_T.shape == (len(completion),) and a.logprobs_T.dtype == np.float32
        np.testing.assert_allclose(a.logprobs_T, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.logprobs_T, b.logprobs_T, atol=1e-5, rtol=0)
        if top_k:
            np.testing.assert_array_equal(a.topk_ids_T_K, rows.topk(top_k).indices.numpy())
            np.testing.assert_allclose(a.topk_logprobs_T_K, b.topk_logprobs_T_K, atol=1e-5, rtol=0)
        else:
            assert a.topk_ids_T_K is None


def test_generation_is_seeded_per_request_and_batched(engine, tiny_model_dir):
    """A request's output depends on its seed, not on what it was batched with."""
    prompts = _random(engine.info.vocab_size, [5, 9, 13], seed=3)
    params = GenerationParams(max_tokens=12, temperature=1.0, seed=7)

    async def together() -> list[str]:
        return await engine.generate(prompts, params)

    async def alone() -> list[str]:
        return [(await engine.generate([p], params))[0] for p in prompts]

    assert asyncio.run(together()) == asyncio.run(alone())
    other = asyncio.run(
        engine.generate(prompts[:1], GenerationParams(max_tokens=12, temperature=1.0, seed=8))
    )
    assert other[0] != asyncio.run(alone())[0]


def test_constrained_generation_parses(engine):
    schema = {
        "type": "object",
        # bounded values: a random model may write digits until max_tokens in an unbounded integer
        "properties": {"n": {"enum": [1, 22, 333]}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
        "additionalProperties": False,
    }
    texts = asyncio.run(
        engine.generate(
            _random(engine.info.vocab_size, [4, 6], seed=4),
            GenerationParams(max_tokens=40, temperature=1.0, seed=1, json_schema=schema),
        )
    )
    for text in texts:
        value = json.loads(text)
        assert set(value) == {"n", "ok"} and value["n"] in (1, 22, 333) and isinstance(value["ok"], bool)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_logits_are_computed_only_for_the_rows_scored(engine, share_prefix):
    """The lm_head never sees context rows before the last: an 8k context must not cost 8k vocab rows."""
    vocab = engine.info.vocab_size
    [context] = _random(vocab, [300], seed=5)
    completions = _random(vocab, [7, 3], seed=6)
    rows_seen: list[int] = []
    hook = engine.model.get_output_embeddings().register_forward_hook(
        lambda _module, _inputs, output: rows_seen.append(output.shape[0] * output.shape[1])
    )
    try:
        engine.score_sync(context, completions, 0, 1.0, share_prefix=share_prefix)
    finally:
        hook.remove()
    # shared: the last context row, then batch x (longest - 1) fed tokens; plain: T + 1 rows each
    expected = 1 + 2 * 6 if share_prefix else (7 + 1) + (3 + 1)
    assert sum(rows_seen) == expected, rows_seen


def test_cancelled_scoring_stops_between_windows(engine, monkeypatch):
    monkeypatch.setattr(hf, "LOGITS_BUDGET_BYTES", 4 * 1000 * 2)  # one position per window
    cancel = threading.Event()
    windows: list[int] = []

    def count_forward(*_: object) -> None:
        windows.append(1)
        if len(windows) == 3:
            cancel.set()

    hook = engine.model.register_forward_hook(count_forward)
    try:
        with pytest.raises(hf.ScoringCancelled):
            engine.score_sync([1, 2, 3], [[4] * 50], 0, 1.0, cancel=cancel)
    finally:
        hook.remove()
    assert len(windows) == 3  # context pass + 2 windows, then it stopped


def test_a_tiny_temperature_samples_only_allowed_tokens():
    """Regression (fuzzing): logits / 5e-118 overflowed to inf and a grammar-masked token was sampled."""
    scores = torch.tensor(
        [[-3.0, 2.5, float("-inf"), -0.5, float("-inf")], [float("-inf"), -2.0, float("-inf"), -3.0, -9.0]]
    )
    sampler = hf._SeededGumbelSampler(
        [
            GenerationParams(max_tokens=1, temperature=5e-118, seed=0),
            GenerationParams(max_tokens=1, temperature=1e-30, seed=1),
        ]
    )
    chosen = sampler(torch.zeros(2, 1, dtype=torch.long), scores.clone()).argmax(-1).tolist()
    assert chosen == [1, 1]  # the best allowed token: at such temperatures sampling is greedy


def test_a_cancelled_generation_stops_the_worker(engine):
    """A caller that gives up (its client went away) stops its generation batch within a step."""
    forwards: list[int] = []
    hook = engine.model.register_forward_hook(lambda *_: forwards.append(1))
    params = GenerationParams(max_tokens=300, temperature=0.0, seed=0)

    async def scenario() -> int:
        task = asyncio.create_task(engine.generate([[5, 6, 7]], params))
        while len(forwards) < 5:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine._run(lambda: None)  # the worker is free again once the batch has stopped
        return len(forwards)

    try:
        stopped_after = asyncio.run(scenario())
        forwards.clear()
        uncancelled = asyncio.run(engine.generate([[5, 6, 7]], params))
    finally:
        hook.remove()
    assert len(forwards) >= 200, f"greedy output ended early ({len(forwards)} steps): {uncancelled!r}"
    assert stopped_after < 50, stopped_after


# probabilities 0.4, 0.3, 0.2, 0.1 (and one token the grammar masked), spread over the vocabulary
PROBS_V = torch.tensor([0.2, 0.0, 0.4, 0.1, 0.3])
LOGITS_V = torch.log(PROBS_V)


@pytest.mark.parametrize(
    ("top_k", "top_p", "kept"),
    [
        (0, 1.0, {0, 2, 3, 4}),  # both off; the masked token stays masked
        (1, 1.0, {2}),
        (2, 1.0, {2, 4}),
        (3, 1.0, {0, 2, 4}),
        (10, 1.0, {0, 2, 3, 4}),  # k past the vocabulary: off
        (0, 0.35, {2}),  # 0.4 already reaches p
        (0, 0.65, {2, 4}),  # 0.4 + 0.3 = 0.7 >= p
        (0, 0.75, {0, 2, 4}),  # 0.9
        (0, 0.95, {0, 2, 3, 4}),
        (0, 1e-9, {2}),  # at least one token
        # top_p of what top_k leaves: 4/9 + 3/9 = 0.78 >= 0.75 (of the full distribution: 0.9, three tokens)
        (3, 0.75, {2, 4}),
        (2, 0.5, {2}),  # 4/7 = 0.57 >= 0.5
        (2, 0.6, {2, 4}),
    ],
)
def test_top_k_then_top_p_keeps_the_hand_computed_tokens(top_k: int, top_p: float, kept: set[int]) -> None:
    """The kept set by hand: the k likeliest tokens, then the fewest (likeliest first) whose probability,
    renormalised over what top_k left, sums to at least p."""
    filtered_V = hf.top_k_top_p(LOGITS_V, top_k, top_p)
    finite_V = filtered_V > float("-inf")
    assert set(torch.nonzero(finite_V)[:, 0].tolist()) == kept
    torch.testing.assert_close(filtered_V[finite_V], LOGITS_V[finite_V])  # the kept ones untouched


def test_the_sampler_draws_from_the_cut_distribution() -> None:
    """Many rows of the same logits, each with its own seed: the draws' frequencies are the
    renormalised probabilities of the tokens top_k=3, top_p=0.75 keep (4/7, 3/7), within 4 standard errors."""
    rows = 20_000
    params = [
        GenerationParams(max_tokens=1, temperature=1.0, top_k=3, top_p=0.75, seed=s) for s in range(rows)
    ]
    scores_N_V = LOGITS_V.expand(rows, -1).clone()
    chosen_N = hf._SeededGumbelSampler(params)(torch.zeros(rows, 1, dtype=torch.long), scores_N_V).argmax(-1)
    counts_V = torch.bincount(chosen_N, minlength=5).double()
    expected_V = torch.tensor([0.0, 0.0, 4 / 7, 0.0, 3 / 7], dtype=torch.double)
    stderr = (expected_V * (1 - expected_V) / rows).sqrt().max()
    assert (counts_V / rows - expected_V).abs().max() < 4 * stderr, counts_V


@pytest.mark.parametrize("cut", [{"top_k": 1}, {"top_p": 1e-6}])
def test_a_cut_to_one_token_is_greedy(engine, cut):
    """top_k=1, or a top_p the likeliest token alone reaches, leaves only the argmax: sampling at
    temperature 1 then writes the greedy text, which plain sampling does not."""
    prompts = _random(engine.info.vocab_size, [5, 9], seed=9)
    greedy = asyncio.run(engine.generate(prompts, GenerationParams(max_tokens=16, temperature=0.0)))
    cut_params = GenerationParams(max_tokens=16, temperature=1.0, seed=3, **cut)
    assert asyncio.run(engine.generate(prompts, cut_params)) == greedy
    sampled = asyncio.run(engine.generate(prompts, GenerationParams(max_tokens=16, temperature=1.0, seed=3)))
    assert sampled != greedy
