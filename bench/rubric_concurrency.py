"""Rubric generation throughput: 32 concurrent requests vs. the same 32 one at a time.

The rubric service on SmolLM2-135M-Instruct with the vLLM backend (continuous batching),
a fresh SQLite store, and 32 distinct keys per phase (the first five questions of the shipped
training slice with different seeds), so nothing is served from the store. Target: concurrent >= 3x rubrics/s.

    .venv/bin/python bench/rubric_concurrency.py [--backend vllm] [--requests 32] [--max-tokens 768]

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rcsd.client import AsyncRubricClient, RubricBounds, RubricRequest
from rcsd.loading.bundled import prepare_default_model
from rcsd.loading.dtype import DTYPES, choose_dtype, cpu_capability, machine_summary
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer.data.questions import load_questions


def requests_for(count: int, first_seed: int, max_tokens: int, bounds: RubricBounds) -> list[RubricRequest]:
    questions = load_questions(["scibench_train"])[:5]
    return [
        RubricRequest(
            question=q.prompt_text,
            reference_answer=q.reference_answer,
            seed=first_seed + i,
            max_tokens=max_tokens,
            bounds=bounds,
        )
        for i, q in ((i, questions[i % len(questions)]) for i in range(count))
    ]


async def run(
    client: AsyncRubricClient, requests: list[RubricRequest], concurrent: bool
) -> tuple[float, int]:
    """Seconds for all requests, and how many came back as rubrics (the rest failed their checks)."""
    started = time.perf_counter()
    if concurrent:
        results = await asyncio.gather(*(client.generate(r) for r in requests), return_exceptions=True)
    else:
        results = []
        for r in requests:
            try:
                results.append(await client.generate(r))
            except Exception as exc:  # a rubric that failed its checks still cost its generation
                results.append(exc)
    elapsed = time.perf_counter() - started
    return elapsed, sum(not isinstance(r, BaseException) for r in results)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=768)
    parser.add_argument(
        "--max-criteria", type=int, default=6, help="the demo's bound: SmolLM2 repeats itself past it"
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the prepared SmolLM2")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    args = parser.parse_args()
    args.dtype = choose_dtype(args.dtype, "cpu").dtype
    print(machine_summary())
    model = args.model or prepare_default_model()
    bounds = RubricBounds(min_criteria=3, max_criteria=args.max_criteria)

    with tempfile.TemporaryDirectory() as folder:
        service = ServiceProcess(
            "rubric",
            [
                "--backend",
                args.backend,
                "--model",
                str(model),
                "--dtype",
                args.dtype,
                "--store-url",
                f"sqlite:///{folder}/rubrics.db",
                "--max-concurrency",
                str(args.requests),
                "--max-attempts",
                "1",
            ],
            Path(folder),
        ).start(timeout_s=600)
        try:
            async with AsyncRubricClient(service.url, timeout=1800, deadline=3600) as client:
                await run(client, requests_for(1, 10_000, args.max_tokens, bounds), False)  # warm-up
                sequential_s, sequential_ok = await run(
                    client, requests_for(args.requests, 0, args.max_tokens, bounds), False
                )
                concurrent_s, concurrent_ok = await run(
                    client, requests_for(args.requests, 1_000, args.max_tokens, bounds), True
                )
        finally:
            service.stop()

    n = args.requests
    ratio = sequential_s / concurrent_s
    print(
        f"\n{n} rubric requests, {model.name} {args.dtype}, CPU {cpu_capability()}, {args.backend} backend, "
        f"max_tokens {args.max_tokens}"
    )
    print(f"{'mode':<16}{'seconds':>9}{'rubrics/s':>11}{'valid':>7}")
    print(f"{'one at a time':<16}{sequential_s:>9.1f}{n / sequential_s:>11.3f}{sequential_ok:>7}")
    print(f"{'concurrent':<16}{concurrent_s:>9.1f}{n / concurrent_s:>11.3f}{concurrent_ok:>7}")
    print(f"concurrent / one at a time: {ratio:.2f}x")
    print(
        json.dumps(
            {
                "bench": "rubric_concurrency",
                "backend": args.backend,
                "dtype": args.dtype,
                "cpu_capability": cpu_capability(),
                "requests": n,
                "sequential_s": sequential_s,
                "concurrent_s": concurrent_s,
                "speedup": ratio,
                "sequential_valid": sequential_ok,
                "concurrent_valid": concurrent_ok,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
