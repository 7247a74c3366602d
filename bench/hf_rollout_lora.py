"""What LoRA costs the trainer's in-process sampling (HfRollout), CPU, one process.

Samples the same prompts with the same seeds from SmolLM2 (or the tiny test model) three ways:
1. the plain base model (no adapter: the floor);
2. the peft LoRA model the trainer trains (`get_peft_model`, r=16 on every projection): what the
   trainer samples from today;
3. the same LoRA weights merged into a separate copy of the base (what a rollout engine that follows
   the student by merging would sample from).
Prints seconds per call (median of `--repeats`), ms per sampled token, and each path's ratio to the
peft path.

    .venv/bin/python bench/hf_rollout_lora.py [--model default|tiny] [--dtype auto] [--tokens 96] [--prompts 4]

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rcsd.loading.dtype import choose_dtype, cpu_capability
from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rollout import HfRollout, SamplingParams

QUESTION = "A ball is thrown up at {v} m/s. How high does it rise? Give the answer in metres."


def load(model: str, dtype: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the tiny model
        from tests.fixtures.tiny_model import build_tiny_model

        path = build_tiny_model(Path(tempfile.mkdtemp()))
    else:
        from rcsd.loading.bundled import prepare_default_model

        path = prepare_default_model(None)
    torch_dtype = getattr(torch, choose_dtype(dtype, "cpu").dtype)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype), AutoTokenizer.from_pretrained(path)


def timed(
    engine: HfRollout, prompts: list[list[int]], params: SamplingParams, repeats: int
) -> tuple[float, int]:
    engine.sample(prompts[:1], params)  # warm-up, not timed
    seconds, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        # One prompt at a time, as the trainer samples each group as soon as the last one is done.
        groups = [engine.sample([prompt], params)[0] for prompt in prompts]
        seconds.append(time.perf_counter() - started)
        tokens = sum(len(r.completion_ids) for group in groups for r in group)
    return statistics.median(seconds), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load(args.model, args.dtype)
    merged = copy.deepcopy(base)
    lora = get_peft_model(
        base,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    with torch.no_grad():  # a trained adapter: B is zero at init, which would make the paths trivially equal
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    merged.load_state_dict(copy.deepcopy(lora).merge_and_unload().state_dict())
    prompts = [student_prompt_ids(tokenizer, QUESTION.format(v=10 + i)) for i in range(args.prompts)]
    params = SamplingParams(max_new_tokens=args.tokens, temperature=1.2, top_p=0.95, top_k=20, seed=0)
    # `base` is wrapped by peft now: its layers carry the adapter, so the floor samples with it disabled.
    rows = {}
    with lora.disable_adapter():
        rows["base model (adapter off)"] = timed(HfRollout(lora, tokenizer), prompts, params, args.repeats)
    rows["peft LoRA model (what the trainer samples)"] = timed(
        HfRollout(lora, tokenizer), prompts, params, args.repeats
    )
    rows["LoRA merged into a copy"] = timed(HfRollout(merged, tokenizer), prompts, params, args.repeats)
    peft_s = rows["peft LoRA model (what the trainer samples)"][0]
    dtype = next(lora.parameters()).dtype
    print(
        f"{args.model}, {dtype}, CPU {cpu_capability()}, torch threads {torch.get_num_threads()}: "
        f"{args.prompts} prompts one at a time, {args.tokens} new tokens, median of {args.repeats}"
    )
    print("| path | seconds | tokens | ms/token | peft / this |\n| --- | ---: | ---: | ---: | ---: |")
    for name, (seconds, tokens) in rows.items():
        print(
            f"| {name} | {seconds:.2f} | {tokens} | {1000 * seconds / max(tokens, 1):.1f} | {peft_s / seconds:.2f}x |"
        )
    print(json.dumps({name: {"seconds": s, "tokens": t} for name, (s, t) in rows.items()}))


if __name__ == "__main__":
    main()
