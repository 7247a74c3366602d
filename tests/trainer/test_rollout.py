"""HfRollout on the tiny model: seeded, batched like one-by-one, ids verbatim, truncation flagged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rollout import HfRollout, SamplingParams

QUESTIONS = ["What is 2 + 2?", "A ball falls for 2 s from rest. How far does it fall, in metres?", "Why?"]


@pytest.fixture(scope="module")
def student(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = [student_prompt_ids(tokenizer, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: left padding is exercised
    return model, tokenizer, prompts


def test_seeded_sampling_is_reproducible_and_leaves_the_callers_rng_alone(student):
    model, tokenizer, prompts = student
    engine = HfRollout(model, tokenizer)
    params = SamplingParams(max_new_tokens=12, seed=3)
    torch.manual_seed(123)
    first = engine.sample(prompts, params, n=3)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert engine.sample(prompts, params, n=3) == first
    assert torch.equal(torch.rand(1), after)
    assert [len(group) for group in first] == [3, 3, 3]
    assert all(r.prompt_ids == p for group, p in zip(first, prompts, strict=True) for r in group)
    assert len({tuple(r.completion_ids) for r in first[0]}) > 1  # n samples, not n copies
    other = engine.sample(prompts, SamplingParams(max_new_tokens=12, seed=4), n=3)
    assert other != first


def test_greedy_batched_equals_one_by_one(student):
    model, tokenizer, prompts = student
    engine = HfRollout(model, tokenizer)
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    batched = [group[0] for group in engine.sample(prompts, params)]
    alone = [engine.sample([p], params)[0][0] for p in prompts]
    assert batched == alone
    in_pairs = [r[0] for r in HfRollout(model, tokenizer, max_batch_size=2).sample(prompts, params)]
    assert in_pairs == alone


def test_stop_token_kept_padding_stripped_truncation_flagged(student):
    model, tokenizer, prompts = student
    engine = HfRollout(model, tokenizer)
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    free = [group[0] for group in engine.sample(prompts, params)]
    assert all(r.truncated and len(r.completion_ids) == 10 for r in free)  # the random model never stops
    # Make the 4th greedy token of the first answer the stop token: that row ends early (and is padded
    # inside the batch), the others run to max_new_tokens.
    stop = free[0].completion_ids[3]
    engine.stop_ids = {stop}
    stopped = [group[0] for group in engine.sample(prompts, params)]
    first_stop = free[0].completion_ids.index(stop)
    assert stopped[0].completion_ids == free[0].completion_ids[: first_stop + 1]
    assert not stopped[0].truncated
    for before, after in zip(free[1:], stopped[1:], strict=True):
        if stop in before.completion_ids:
            cut = before.completion_ids.index(stop) + 1
            assert after.completion_ids == before.completion_ids[:cut] and not after.truncated
        else:
            assert after == before


def test_training_mode_is_restored(student):
    model, tokenizer, prompts = student
    model.train()
    HfRollout(model, tokenizer).sample(prompts[:1], SamplingParams(max_new_tokens=2))
    assert model.training
    model.eval()


def test_sampled_batched_equals_one_request_at_a_time(student):
    """Every row has its own generator: the batch, its chunking and its neighbours change no token."""
    model, tokenizer, prompts = student
    requests = [(p, SamplingParams(max_new_tokens=12, seed=10 + i)) for i, p in enumerate(prompts)]
    engine = HfRollout(model, tokenizer)
    alone = [engine.sample([p], params, n=2)[0] for p, params in requests]
    assert len({tuple(r.completion_ids) for group in alone for r in group}) == 6  # really sampled
    for batched_engine in (engine, HfRollout(model, tokenizer, max_batch_size=2)):
        streamed = dict(batched_engine.sample_stream(requests, n=2))
        assert [streamed[i] for i in range(len(prompts))] == alone
    reversed_batch = dict(engine.sample_stream(requests[::-1], n=2))
    assert [reversed_batch[i] for i in range(len(prompts))][::-1] == alone


def test_stream_yields_each_request_when_its_rows_stop(student):
    """A request whose answers end early comes out before the ones that run to max_new_tokens."""
    model, tokenizer, prompts = student
    engine = HfRollout(model, tokenizer)
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    free = [group[0] for group in engine.sample(prompts, greedy)]
    engine.stop_ids = {free[2].completion_ids[2]}  # the last request now stops at its 3rd token
    order = [i for i, _ in engine.sample_stream([(p, greedy) for p in prompts])]
    assert order[0] == 2 and sorted(order) == [0, 1, 2]
