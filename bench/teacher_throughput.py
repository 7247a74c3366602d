"""Teacher scoring speed on the embedded default model (SmolLM2-135M-Instruct), CPU.

Workload: one prompt group of G=8 completions of 256 tokens sharing a 1,024-token teacher
context, top_k=20 (the RCSD shape). Measures, each as the median of --reps timed runs after
one warm-up, all in this one process run:

1. tokens/s of the teacher service over HTTP (the typed client, msgpack answers) vs. the same
   backend's engine called in-process: what HTTP costs (target: at most 10 %).
2. the service vs. vLLM's own OpenAI server scoring the 8 full sequences with
   `prompt_logprobs` (what a user would do without this project), both as one call with 8
   prompts and as 8 concurrent requests (target: at least 3x faster).

    .venv/bin/python bench/teacher_throughput.py [--backends vllm,hf] [--dtype auto]

`--dtype auto` (the default) is resolved once by rcsd.loading.dtype and the same dtype is given to
every path, vLLM's own server included; the CPU capability and dtype are printed with the figures.

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
from transformers import AutoTokenizer

from rcsd.client import AsyncTeacherClient, TeacherRequest
from rcsd.loading.bundled import prepare_default_model
from rcsd.loading.dtype import DTYPES, choose_dtype, cpu_capability, machine_summary
from rcsd.recipes.launch import ServiceProcess, free_port, wait_until_ok
from rcsd.services.engines.base import EngineConfig
from rcsd.services.engines.loader import load_engine
from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env

GROUP, COMPLETION_TOKENS, CONTEXT_TOKENS, TOP_K = 8, 256, 1024, 20
FILLER = (
    "A projectile is launched at an angle above the horizontal. Neglecting air resistance, its horizontal "
    "velocity stays constant while gravity accelerates it downward; the range depends on the launch speed, "
    "the angle and the gravitational acceleration. "
)


async def median_seconds(run: Callable[[int], Awaitable[object]], reps: int) -> float:
    """Run i scores completion set i: fresh completions each time, as in training (a repeat
    of the very same sequences would be a prefix-cache hit that no training step gets)."""
    await run(0)  # warm-up: compilation, caches, connection set-up
    times = []
    for i in range(1, reps + 1):
        started = time.perf_counter()
        await run(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def workload(tokenizer, service_url: str, reps: int) -> tuple[list[TeacherRequest], list[int]]:
    """`none`-mode groups (one per run) whose rendered context is exactly CONTEXT_TOKENS long,
    and that context."""
    rng = np.random.default_rng(0)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    completion_sets = [
        [rng.choice(vocab, COMPLETION_TOKENS).tolist() for _ in range(GROUP)] for _ in range(reps + 1)
    ]
    completions = completion_sets[0]
    filler_ids = tokenizer(FILLER * 40, add_special_tokens=False)["input_ids"]
    n = CONTEXT_TOKENS
    for _ in range(20):  # the template adds tokens around the question: trim until exact
        request = TeacherRequest(
            question=tokenizer.decode(filler_ids[:n]),
            context_mode="none",
            completions=completions,
            top_k=TOP_K,
            return_context_ids=True,
        )
        probe = request.model_copy(update={"completions": [[vocab[0]]]})
        context = httpx.post(
            f"{service_url}/teacher_logprobs", json=probe.model_dump(mode="json"), timeout=120
        ).json()["context_ids"]
        if len(context) == CONTEXT_TOKENS:
            request = request.model_copy(update={"return_context_ids": False})
            return [request.model_copy(update={"completions": c}) for c in completion_sets], context
        n += CONTEXT_TOKENS - len(context)
    raise RuntimeError("could not build an exact 1,024-token context")


async def bench_backend(backend: str, model: Path, dtype: str, reps: int, log_dir: Path) -> dict:
    service = ServiceProcess(
        "teacher",
        ["--backend", backend, "--model", str(model), "--dtype", dtype, "--max-top-k", str(TOP_K)],
        log_dir,
    ).start(timeout_s=600)
    try:
        async with AsyncTeacherClient(service.url, binary=True, timeout=600) as client:
            engine_info = await client.info()
            requests, context = workload(AutoTokenizer.from_pretrained(model), service.url, reps)
            http_s = await median_seconds(lambda i: client.score(requests[i]), reps)
    finally:
        service.stop()
    engine = await load_engine(backend, EngineConfig(model=str(model), dtype=dtype, max_top_k=TOP_K))
    try:
        inproc_s = await median_seconds(
            lambda i: engine.score(context, requests[i].completions, TOP_K, 1.0), reps
        )
    finally:
        await engine.aclose()
    return {
        "backend": backend,
        "dtype": engine_info.model.dtype,
        "http_s": http_s,
        "inprocess_s": inproc_s,
        "requests": requests,
        "context": context,
    }


async def bench_vllm_openai(
    model: Path,
    dtype: str,
    reps: int,
    context: list[int],
    completion_sets: list[list[list[int]]],
    log_dir: Path,
) -> dict:
    port = free_port()
    log = open(log_dir / "vllm-openai.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--dtype",
            dtype,
            "--port",
            str(port),
            "--max-logprobs",
            str(TOP_K + 1),
            "--enforce-eager",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**vllm_cpu_env(), "VLLM_CPU_KVCACHE_SPACE": "2", **os.environ},  # 2 GiB, as our engine
    )
    url = f"http://127.0.0.1:{port}"
    try:
        describe = f"vLLM OpenAI server; see {log_dir / 'vllm-openai.log'}"
        await asyncio.to_thread(wait_until_ok, f"{url}/health", server, 600, lambda: describe)
        sequence_sets = [[context + c for c in completions] for completions in completion_sets]
        body = {"model": str(model), "max_tokens": 1, "prompt_logprobs": TOP_K, "temperature": 0}
        async with httpx.AsyncClient(timeout=600) as http:

            async def one_call(i: int) -> None:
                r = await http.post(f"{url}/v1/completions", json={**body, "prompt": sequence_sets[i]})
                r.raise_for_status()

            async def per_sequence(i: int) -> None:
                rs = await asyncio.gather(
                    *(
                        http.post(f"{url}/v1/completions", json={**body, "prompt": s})
                        for s in sequence_sets[i]
                    )
                )
                for r in rs:
                    r.raise_for_status()

            return {
                "one_call_s": await median_seconds(one_call, reps),
                "per_sequence_s": await median_seconds(per_sequence, reps),
            }
    finally:
        server.terminate()
        server.wait(60)
        log.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="vllm,hf")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="default: the prepared SmolLM2")
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench-logs"))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    args.dtype = choose_dtype(args.dtype, "cpu").dtype  # one dtype for every path, baseline included
    print(machine_summary())
    model = args.model or prepare_default_model()
    tokens = GROUP * COMPLETION_TOKENS

    results = [
        await bench_backend(b, model, args.dtype, args.reps, args.log_dir) for b in args.backends.split(",")
    ]
    first = results[0]
    baseline = await bench_vllm_openai(
        model,
        args.dtype,
        args.reps,
        first["context"],
        [r.completions for r in first["requests"]],
        args.log_dir,
    )
    best_baseline = min(baseline.values())

    print(
        f"\nG={GROUP} x {COMPLETION_TOKENS} tokens, {CONTEXT_TOKENS}-token shared context, top_k={TOP_K}, "
        f"{model.name} {args.dtype}, CPU {cpu_capability()}, median of {args.reps}"
    )
    print(f"{'path':<44}{'seconds':>9}{'tokens/s':>10}{'ratio':>10}")
    summary: dict[str, float] = {}
    for r in results:
        b = r["backend"]
        overhead = r["http_s"] / r["inprocess_s"] - 1
        speedup = best_baseline / r["http_s"]
        print(
            f"{b + ' engine, in-process':<44}{r['inprocess_s']:>9.2f}{tokens / r['inprocess_s']:>10.0f}{'':>10}"
        )
        print(
            f"{b + ' service over HTTP':<44}{r['http_s']:>9.2f}{tokens / r['http_s']:>10.0f}"
            f"{f'{overhead:+.1%}':>10}"
        )
        print(f"{'  speed-up vs vLLM OpenAI prompt_logprobs':<44}{'':>9}{'':>10}{f'{speedup:.2f}x':>10}")
        summary |= {
            f"{b}_http_s": r["http_s"],
            f"{b}_inprocess_s": r["inprocess_s"],
            f"{b}_http_overhead": overhead,
            f"{b}_speedup_vs_vllm_openai": speedup,
        }
    print(
        f"{'vLLM OpenAI server, 8 prompts in one call':<44}{baseline['one_call_s']:>9.2f}"
        f"{tokens / baseline['one_call_s']:>10.0f}"
    )
    print(
        f"{'vLLM OpenAI server, 8 concurrent requests':<44}{baseline['per_sequence_s']:>9.2f}"
        f"{tokens / baseline['per_sequence_s']:>10.0f}"
    )
    summary |= {f"vllm_openai_{k}": v for k, v in baseline.items()}
    machine = {"dtype": args.dtype, "cpu_capability": cpu_capability()}
    print(json.dumps({"bench": "teacher_throughput", **machine, **summary}))


if __name__ == "__main__":
    asyncio.run(main())
