"""Is `dtype=auto` the faster dtype on this machine? Teacher scoring in float32 vs bfloat16.

Workload: one teacher group of G=4 completions of 128 tokens sharing a 512-token context, top_k=20,
scored by the engine in-process (the service's compute path without HTTP), median of --reps runs
after a warm-up, once per dtype, on the embedded default model (SmolLM2-135M-Instruct) unless
--model is given. The ratio is (time of the dtype `auto` did not pick) / (time of the one it did):
at least 1.0 means the choice is never the slower one.

By default it runs twice: on this machine as it is, and in a child process that sees it as an
AVX2-only CPU (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`: torch's and oneDNN's kernels
are then the ones an AVX2 CPU runs), so both branches of the choice are measured.

    .venv/bin/python bench/dtype_choice.py [--backend hf|vllm] [--reps 3] [--no-avx2]

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
from pathlib import Path

import numpy as np

from rcsd.loading.bundled import prepare_default_model
from rcsd.loading.dtype import choose_dtype, cpu_capability, machine_summary
from rcsd.services.engines.base import EngineConfig
from rcsd.services.engines.loader import load_engine

GROUP, COMPLETION_TOKENS, CONTEXT_TOKENS, TOP_K = 4, 128, 512, 20
AS_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


async def time_dtype(backend: str, model: Path, dtype: str, reps: int) -> float:
    engine = await load_engine(backend, EngineConfig(model=str(model), dtype=dtype, max_top_k=TOP_K))
    try:
        rng = np.random.default_rng(0)
        vocab = engine.info.vocab_size
        context = rng.integers(0, vocab, CONTEXT_TOKENS).tolist()
        times = []
        for rep in range(reps + 1):  # fresh completions each run: no cache hits on vLLM
            completions = rng.integers(0, vocab, (GROUP, COMPLETION_TOKENS)).tolist()
            started = time.perf_counter()
            await engine.score(context, completions, TOP_K, 1.0)
            if rep:  # the first is a warm-up
                times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        await engine.aclose()


def measure(backend: str, model: Path, reps: int) -> dict:
    auto = choose_dtype("auto", "cpu").dtype
    seconds = {
        dtype: asyncio.run(time_dtype(backend, model, dtype, reps)) for dtype in ("float32", "bfloat16")
    }
    other = "bfloat16" if auto == "float32" else "float32"
    return {
        "cpu_capability": cpu_capability(),
        "auto": auto,
        "float32_s": seconds["float32"],
        "bfloat16_s": seconds["bfloat16"],
        "other_over_auto": seconds[other] / seconds[auto],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="default: the prepared SmolLM2")
    parser.add_argument("--no-avx2", action="store_true", help="skip the run as an AVX2-only CPU")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or prepare_default_model()
    if args.child:  # one measurement, as JSON, for the parent
        print(json.dumps(measure(args.backend, model, args.reps)))
        return

    print(machine_summary())
    rows = {"this machine": measure(args.backend, model, args.reps)}
    if not args.no_avx2:
        command = [sys.executable, __file__, "--child", "--backend", args.backend, "--reps", str(args.reps)]
        child = subprocess.run(
            [*command, "--model", str(model)],
            env={**os.environ, **AS_AVX2},
            capture_output=True,
            text=True,
            check=True,
        )
        rows["as an AVX2-only CPU"] = json.loads(child.stdout.strip().splitlines()[-1])

    print(
        f"\nG={GROUP} x {COMPLETION_TOKENS} tokens, {CONTEXT_TOKENS}-token context, top_k={TOP_K}, "
        f"{model.name}, {args.backend} engine in-process, median of {args.reps}"
    )
    print(f"{'run':<22}{'capability':>11}{'float32 s':>11}{'bfloat16 s':>12}{'auto':>10}{'other/auto':>12}")
    for name, r in rows.items():
        print(
            f"{name:<22}{r['cpu_capability']:>11}{r['float32_s']:>11.2f}{r['bfloat16_s']:>12.2f}"
            f"{r['auto']:>10}{r['other_over_auto']:>11.2f}x"
        )
    print(json.dumps({"bench": "dtype_choice", "backend": args.backend, "runs": rows}))


if __name__ == "__main__":
    main()
