"""A stock vLLM server as the teacher vs rcsd's teacher service, same model, same requests, one run.

Workload: prompt groups of G=8 completions of 256 tokens in the `rubric+reference` mode, with a
question of about 700 tokens (the teacher's context ~800 tokens), top_k=20. Both paths render the same
context (the stock path in the client, `rcsd.client.stock_vllm`); rcsd's service (vllm backend)
computes the context once per group, the stock server once per completion (one prompt each). Reports
the median seconds per group of --reps timed groups after one warm-up (fresh completions per group,
as in training), the ratio, and the largest log-prob difference between the two.

    .venv/bin/python bench/stock_teacher.py [--model DIR] [--dtype auto] [--reps 3]

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from rcsd.client import TeacherClient, TeacherRequest, TeacherResponse
from rcsd.client.stock_vllm import StockVLLMTeacher
from rcsd.loading.bundled import prepare_default_model
from rcsd.loading.dtype import DTYPES, choose_dtype, cpu_capability, machine_summary
from rcsd.recipes.launch import ServiceProcess, StockVLLMProcess, stop_all

GROUP, COMPLETION_TOKENS, QUESTION_WORDS, TOP_K = 8, 256, 500, 20
RUBRIC = [
    {"title": "Uses energy conservation", "description": "Sets m g h equal to m v^2 / 2.", "weight": 8},
    {"title": "Correct value", "description": "Gives v close to 19.8 m/s with units.", "weight": 9},
]


def requests(tokenizer, reps: int) -> list[TeacherRequest]:
    rng = np.random.default_rng(0)
    special = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    question = " ".join(["A stone falls from a 20 m cliff; how fast does it land?"] * (QUESTION_WORDS // 12))
    return [
        TeacherRequest(
            question=question,
            reference_answer="v = sqrt(2 g h) = 19.8 m/s",
            rubric=RUBRIC,
            completions=[rng.choice(vocab, COMPLETION_TOKENS).tolist() for _ in range(GROUP)],
            top_k=TOP_K,
        )
        for _ in range(reps + 1)
    ]


def timed(score: Callable[[TeacherRequest], TeacherResponse], groups: list[TeacherRequest]) -> tuple:
    """(median seconds of groups[1:], every answer); groups[0] warms up."""
    answers, times = [score(groups[0])], []
    for group in groups[1:]:
        started = time.perf_counter()
        answers.append(score(group))
        times.append(time.perf_counter() - started)
    return statistics.median(times), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the prepared SmolLM2")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench-logs"))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    dtype = choose_dtype(args.dtype, "cpu").dtype
    print(machine_summary())
    model = args.model or prepare_default_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    groups = requests(tokenizer, args.reps)
    flags = ["--dtype", dtype, "--max-logprobs", str(TOP_K + 1), "--enforce-eager"]
    rcsd = ["--backend", "vllm", "--model", str(model), "--dtype", dtype, "--max-top-k", str(TOP_K)]
    # one at a time: two engines on the same few cores would time each other
    service = ServiceProcess("teacher", rcsd, args.log_dir).start(timeout_s=900)
    try:
        ours_s, ours = timed(TeacherClient(service.url, timeout=900).score, groups)
    finally:
        stop_all([service])
    stock = StockVLLMProcess(model, flags, args.log_dir).start(timeout_s=900)
    try:
        client = StockVLLMTeacher(stock.url, timeout=900)
        client.check_compatible(tokenizer)
        stock_s, theirs = timed(client.score, groups)
    finally:
        stop_all([stock])
    gap = max(
        float(np.abs(a.logprobs - b.logprobs).max())
        for x, y in zip(ours, theirs, strict=True)
        for a, b in zip(x.completions, y.completions, strict=True)
    )
    context = ours[0].context_length
    tokens = GROUP * COMPLETION_TOKENS
    print(
        f"\nG={GROUP} x {COMPLETION_TOKENS} tokens after a {context}-token context, top_k={TOP_K}, "
        f"{model.name} {dtype}, CPU {cpu_capability()}, median of {args.reps}"
    )
    print(f"{'teacher':<34}{'s/group':>9}{'tokens/s':>10}")
    print(f"{'rcsd teacher service (vllm)':<34}{ours_s:>9.2f}{tokens / ours_s:>10.0f}")
    print(f"{'stock vLLM server':<34}{stock_s:>9.2f}{tokens / stock_s:>10.0f}")
    print(f"rcsd is {stock_s / ours_s:.2f}x the stock server's speed; max |log-prob difference| {gap:.2e}")
    summary = {"rcsd_s": ours_s, "stock_s": stock_s, "speedup": stock_s / ours_s, "max_logprob_gap": gap}
    print(json.dumps({"bench": "stock_teacher", "dtype": dtype, "context_tokens": context, **summary}))


if __name__ == "__main__":
    main()
