"""Trainer step time: overlapping the service calls with the rollouts, and batching the rollouts, CPU.

Runs the real trainer (`rcsd.trainer.train.main`, RCSD, hf rollouts) three times in this one process
against the same real teacher and rubric services (hf backend, on loopback):

1. overlap, batched (the defaults): the next step's rubrics are requested during this step; all of the
   step's prompts go through one batched `generate`, each group to the teacher as soon as it stops;
2. serial (the overlap's baseline): batched, but each step first waits for its rubrics, samples every
   group, then sends all groups to the teacher and waits;
3. one at a time (the batching's baseline): overlap on, but one prompt per `generate` call (what the
   loop did before issue 19); each group is scored while the next one samples. The same seeds give
   the same tokens in 1 and 3, so both runs sample and score the same rollouts.

The services get their own CPU core and the trainer another (`--pin`, the default), as in production
where the services run on their own machines: on one shared set of cores the overlap would only make
the processes compete for them. Each run gets its own questions, so every rubric is generated fresh in
both (as in a run over a large data set, where a question's rubric is new the first time it is seen).
Reports the mean and median step time over the steps after the first (warm-up), the mean time per
phase, the ratio of the serial run's mean step time to the overlapped one's (target >= 1.3x), and the
one-at-a-time run's rollout and step times over the batched one's.

    .venv/bin/python bench/trainer_step.py [--model tiny|default] [--steps 6] [--prompts 8] [--no-pin]

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from rcsd.loading.dtype import cpu_capability
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.train import main

PHASES = ("rubrics", "rollout", "teacher_wait", "student", "optimizer", "update", "step")


def questions(path: Path, count: int, tag: str) -> Path:
    """`count` distinct numeric questions (distinct per run, so no rubric comes from the store)."""
    lines = []
    for i in range(count):
        a, b = 3 + i, 7 + 2 * i
        lines.append(
            {
                "id": f"{tag}-{i}",
                "source": "bench",
                "subject": "physics",
                "answer_type": "numeric",
                "question": f"[{tag}] A cart of mass {a} kg moves at {b} m/s. What is its momentum?",
                "choices": None,
                "answer": str(a * b),
                "unit": "kg m/s",
                "reference_solution": f"p = m v = {a} * {b} = {a * b} kg m/s.",
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run(
    args: argparse.Namespace,
    model: str,
    urls: dict[str, str],
    work: Path,
    tag: str,
    overlap: bool,
    batched: bool,
) -> dict:
    config = TrainConfig(
        model=model,
        dtype="float32",
        device="cpu",
        lr=1e-4,
        steps=args.steps,
        prompts_per_step=args.prompts,
        sampling={"max_new_tokens": args.max_new_tokens, "batched": batched},
        teacher={"top_k": 20},
        rubric={
            "min_criteria": 1,
            "max_criteria": 3,
            "max_tokens": args.rubric_max_tokens,
            "on_failure": "reference",
        },
        services={"teacher_urls": [urls["teacher"]], "rubric_urls": [urls["rubric"]]},
        data=[str(questions(work / f"{tag}.jsonl", args.steps * args.prompts, tag))],
        output_dir=str(work / tag),
        checkpoint_every=10_000,
        overlap=overlap,
        plots=False,
        progress=False,
    )
    records = read_metrics(main(config))[1:]  # the first step warms up
    phases = {p: statistics.mean(r[f"time/{p}"] for r in records) for p in PHASES}
    return {
        "median_step_s": statistics.median(r["time/step"] for r in records),
        "mean_step_s": phases["step"],
        "phases": phases,
    }


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (built here) or default (SmolLM2)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rubric-max-tokens", type=int, default=384)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="CPU 0 / CPU 1")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2

    with tempfile.TemporaryDirectory(prefix="rcsd-bench-") as tmp:
        work = Path(tmp)
        if args.model == "tiny":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the tiny model
            from tests.fixtures.tiny_model import build_tiny_model

            model = str(build_tiny_model(work / "tiny"))
        else:
            from rcsd.loading.bundled import prepare_default_model

            model = str(prepare_default_model())
        common = ["--backend", "hf", "--model", model, "--dtype", "float32"]
        services = [
            ServiceProcess("teacher", [*common, "--max-top-k", "20"], work),
            ServiceProcess("rubric", [*common, "--store-url", f"sqlite:///{work / 'rubrics.db'}"], work),
        ]
        try:
            if pin:  # children inherit the affinity they are started with
                os.sched_setaffinity(0, set(cpus[1:]))
            for service in services:
                service.start()
            if pin:
                os.sched_setaffinity(0, {cpus[0]})
                torch.set_num_threads(1)
            urls = {s.service: s.url for s in services}
            serial = run(args, model, urls, work, "serial", overlap=False, batched=True)
            overlap = run(args, model, urls, work, "overlap", overlap=True, batched=True)
            alone = run(args, model, urls, work, "one-at-a-time", overlap=True, batched=False)
        finally:
            for service in services:
                service.stop()

    ratio = serial["mean_step_s"] / overlap["mean_step_s"]
    batching = {
        "rollout": alone["phases"]["rollout"] / overlap["phases"]["rollout"],
        "step": alone["mean_step_s"] / overlap["mean_step_s"],
    }
    where = f"trainer on CPU {cpus[0]}, services on CPUs {cpus[1:]}" if pin else f"all on CPUs {cpus}"
    print(
        f"\nCPU {cpu_capability()} ({where}), model {args.model}, {args.prompts} prompts x {args.steps} steps"
    )
    runs = {"serial": serial, "overlap": overlap, "one at a time": alone}
    print(f"{'phase (mean s)':<16}" + "".join(f"{name:>15}" for name in runs))
    for phase in PHASES:
        print(f"{phase:<16}" + "".join(f"{r['phases'][phase]:>15.3f}" for r in runs.values()))
    print(f"{'median step':<16}" + "".join(f"{r['median_step_s']:>15.3f}" for r in runs.values()))
    print(f"speed-up from the overlap (mean step, serial / overlap): {ratio:.2f}x")
    print(f"speed-up from batching (one at a time / batched): rollout {batching['rollout']:.2f}x, "
          f"step {batching['step']:.2f}x\n")  # fmt: skip
    print(json.dumps({"bench": "trainer_step", "cpu": cpu_capability(), "pinned": pin, "model": args.model,
                      "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                      "serial": serial, "overlap": overlap, "one_at_a_time": alone, "ratio": round(ratio, 3),
                      "batching_ratio": {k: round(v, 3) for k, v in batching.items()}}))  # fmt: skip


if __name__ == "__main__":
    main_bench()
