"""`rcsd demo` (`make demo`): RCSD end to end on this machine, from nothing to a trained student and a report.

1. prepare the embedded SmolLM2-135M-Instruct (once; later runs reuse it);
2. start the teacher and rubric services as real processes on loopback (`rcsd serve`), logs in the run folder;
3. ask the rubric service for a rubric per training and probe question (stored in the cache dir, so a
   second run gets them back `cached: true`, and training finds them in the store);
4. evaluate the student before training: greedy accuracy on a small held-out slice;
5. train: a few RCSD steps through the trainer's `main(config)` (the shipped `smollm2_cpu.yaml` recipe,
   shrunk), which calls both services over HTTP and measures its held-out probe before and after;
6. stop the services (SIGTERM, wait), then evaluate the trained student (LoRA adapter) on the same slice;
7. write `report.md` and `summary.json` into `runs/demo-<timestamp>/` (training's own folder is `train/`).

    rcsd demo [--backend hf|vllm] [--dtype float32] [key=value ...]     # overrides of the training config
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress

from rcsd.client import BatchError, ItemError, RcsdError, RubricClient, RubricResponse
from rcsd.loading.dtype import DTYPES
from rcsd.recipes.demo.processes import DemoService
from rcsd.recipes.demo.report import DemoReport, EvalSummary, RubricOutcome
from rcsd.recipes.launch import stop_all
from rcsd.trainer.config import TrainConfig, load_config
from rcsd.trainer.data.questions import Question, load_questions

RECIPE = "smollm2_cpu.yaml"
# The recipe, shrunk to minutes on 2 cores: 4 steps of 4 questions, a 4-question probe.
DEMO_OVERRIDES = ["steps=4", "prompts_per_step=4", "probe.questions=4", "probe.max_new_tokens=48"]
EVAL_SETS = ("mmlu_physics_heldout", "mmlu_chemistry_heldout", "mmlu_biology_heldout")
STORE_FILE = "demo-rubrics.db"
RUBRICS_PER_REQUEST = 4  # a bar that moves; the requests go at once, so the service still batches them
RUBRIC_TIMEOUT_S = 1800.0  # a batch of rubrics, every attempt, on a busy 2-core CPU
# SmolLM2 writes a rubric that passes the checks on its first or second try, or rarely at all: more
# attempts cost minutes on a CPU, and training falls back to the reference-only context without one.
RUBRIC_ATTEMPTS = 2
T = TypeVar("T")


def default_backend() -> str:
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rcsd demo",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=f"key=value overrides apply to the training config (rcsd.trainer.config, recipe {RECIPE}), "
        "e.g. steps=8 rubric.max_criteria=4 teacher.context_mode=rubric",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    parser.add_argument("--backend", choices=["hf", "vllm"], default=None, help="default: vllm if installed")
    parser.add_argument("--model", type=Path, default=None, help="a model folder (skips preparing SmolLM2)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the model is prepared and the rubric store is kept (default: $RCSD_CACHE_DIR; "
        "without it, the model in ~/.cache/rcsd/models and the store in ~/.cache/rcsd)",
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo-<timestamp>")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="every model (auto: bfloat16 where the CPU has it)"
    )
    parser.add_argument("--eval-sets", nargs="+", default=list(EVAL_SETS), help="held-out sets (names/files)")
    parser.add_argument("--eval-questions", type=int, default=8, help="the first N questions of each set")
    parser.add_argument("--eval-max-new-tokens", type=int, default=128, help="length of an eval answer")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for a service")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, console = time.perf_counter(), Console()
    backend = args.backend or default_backend()
    run_dir = (args.run_dir or _new_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    store = _store_path(args.cache_dir).resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}

    def phase(number: int, title: str) -> None:
        console.rule(f"[bold]{number}/7 {escape(title)}", align="left")

    phase(1, "Preparing the model")
    if args.model is None:
        from rcsd.loading.bundled import prepare_default_model

        console.print("SmolLM2-135M-Instruct: converted once from the bundled GGUF, then reused")
        model_dir, phases["prepare model"] = _timed(lambda: prepare_default_model(args.cache_dir))
    else:
        model_dir = args.model
    model_dir = model_dir.resolve()
    teacher, rubric = _services(backend, model_dir, args.dtype, store, run_dir)
    config = _train_config(args, model_dir, teacher, rubric, run_dir)
    report = DemoReport.start(run_dir, backend, model_dir, store, config, [teacher, rubric])
    console.print(f"model {model_dir}, backend {backend}, run folder {run_dir}", markup=False)

    try:
        phase(2, "Starting the teacher and rubric services (real processes on loopback)")
        _, phases["start services"] = _timed(lambda: _start(console, args, teacher, rubric))
        phase(3, "Rubrics for the training and probe questions (from the store, or generated once)")
        report.rubrics, phases["rubrics"] = _timed(lambda: _rubrics(console, config, rubric.url))
        phase(4, "Evaluating the student before training")
        report.eval_before, phases["eval before"] = _timed(lambda: _evaluate(args, model_dir, None))
        phase(5, f"Training: {config.steps} RCSD steps through rcsd.trainer.train.main")
        from rcsd.trainer.train import main as train

        train_dir, phases["train"] = _timed(lambda: train(config))
    except (RuntimeError, TimeoutError, RcsdError) as exc:  # a service did not start, or went away
        console.print(f"[red]The demo stopped:[/red] {escape(str(exc))}")
        return 1
    finally:
        phase(6, "Stopping the services (SIGTERM, then waiting for a clean exit)")
        _, phases["stop services"] = _timed(lambda: stop_all((teacher, rubric)))
        for service in (teacher, rubric):
            report.services[service.service]["exit"] = service.exit_status()
            console.print(f"{service.service} service: {service.exit_status()}", markup=False)

    console.print("Evaluating the trained student on the same questions")
    report.eval_after, phases["eval after"] = _timed(lambda: _evaluate(args, model_dir, train_dir))
    phase(7, "Report")
    report.phases_s, report.total_s = phases, time.perf_counter() - started
    md_path, _ = report.write()
    report.print(console)
    console.print(f"Wrote {md_path} (and summary.json; training's metrics and curves in {train_dir})")
    return 0


def _train_config(
    args: argparse.Namespace, model_dir: Path, teacher: DemoService, rubric: DemoService, run_dir: Path
) -> TrainConfig:
    """The shipped CPU recipe, shrunk (DEMO_OVERRIDES, then the user's), pointed at this demo's services."""
    forced = [
        f"model={model_dir}",
        f"dtype={args.dtype}",
        f"services.teacher_urls=[{teacher.url}]",
        f"services.rubric_urls=[{rubric.url}]",
        f"output_dir={run_dir / 'train'}",
    ]
    config = load_config(RECIPE, [*DEMO_OVERRIDES, *args.overrides, *forced])
    # One checkpoint, at the end; every question trained on has its rubric asked for ahead (phase 3).
    update: dict[str, object] = {"checkpoint_every": config.steps}
    if config.data_limit is None:
        update["data_limit"] = config.steps * config.prompts_per_step
    return config.model_copy(update=update)


def _services(
    backend: str, model_dir: Path, dtype: str, store: Path, run_dir: Path
) -> tuple[DemoService, DemoService]:
    common = ["--model", str(model_dir), "--dtype", dtype] + (
        ["--kv-cache-gb", "1"] if backend == "vllm" else []
    )
    teacher = DemoService("teacher", backend, common, run_dir)
    rubric_args = ["--store-url", f"sqlite:///{store}", "--max-attempts", str(RUBRIC_ATTEMPTS)]
    rubric = DemoService("rubric", backend, [*common, *rubric_args], run_dir)
    return teacher, rubric


def _start(console: Console, args: argparse.Namespace, teacher: DemoService, rubric: DemoService) -> None:
    """Both load their engines at once; the spinner says for how long."""
    with console.status("loading both engines (vLLM on CPU takes a minute or two)"):
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(s.start, args.ready_timeout) for s in (teacher, rubric)]:
                future.result()
    for service in (teacher, rubric):
        console.print(f"{service.service}: {service.url}, log {service.log_path}", markup=False)


def _rubrics(console: Console, config: TrainConfig, url: str) -> list[RubricOutcome]:
    """Every rubric training and its probe will ask for; a failed one is recorded, not fatal.

    The requests are the trainer's own (`rubric_request`), so training finds them in the store. A
    question whose rubric fails is trained with the reference-only context (`rubric.on_failure`).
    """
    from rcsd.trainer.service_calls import rubric_request

    questions = load_questions(config.data)[: config.data_limit]
    questions += load_questions(config.probe.data)[: config.probe.questions]
    chunks = [questions[i : i + RUBRICS_PER_REQUEST] for i in range(0, len(questions), RUBRICS_PER_REQUEST)]

    def one_chunk(client: RubricClient, chunk: list[Question]) -> list[RubricResponse | ItemError | str]:
        try:
            return list(client.generate_batch([rubric_request(config.rubric, q) for q in chunk]))
        except BatchError as exc:  # some items failed alone: the others' rubrics are kept
            return exc.outcomes
        except RcsdError as exc:
            return [str(exc)] * len(chunk)

    answers: dict[int, list[RubricResponse | ItemError | str]] = {}
    with (
        RubricClient(
            url, timeout=httpx.Timeout(RUBRIC_TIMEOUT_S, connect=5.0), deadline=RUBRIC_TIMEOUT_S
        ) as client,
        ThreadPoolExecutor(max_workers=len(chunks)) as pool,
        # off a terminal (a log file, a Job's stream) no live bar: the outcome lines below say it
        Progress(
            *Progress.get_default_columns(),
            MofNCompleteColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as progress,
    ):
        bar = progress.add_task("rubrics", total=len(questions))
        futures = {pool.submit(one_chunk, client, chunk): i for i, chunk in enumerate(chunks)}
        for future in as_completed(futures):  # the bar moves as each request is answered
            answers[futures[future]] = future.result()
            progress.advance(bar, len(answers[futures[future]]))
    outcomes = [
        RubricOutcome.of(question, answer)
        for i, chunk in enumerate(chunks)
        for question, answer in zip(chunk, answers[i], strict=True)
    ]
    for outcome in outcomes:
        if outcome.error is not None:
            console.print(f"[yellow]no rubric for {outcome.question_id}:[/yellow] {escape(outcome.error)}")
    return outcomes


def _evaluate(args: argparse.Namespace, model_dir: Path, train_dir: Path | None) -> EvalSummary:
    """Greedy accuracy on the held-out slice: the base model, or with the run's final weights."""
    from rcsd.recipes.evaluate import EvalSettings, checkpoint_weights, evaluate_checkpoint

    model, adapter = str(model_dir), None
    if train_dir is not None:
        model, adapter = checkpoint_weights(str(model_dir), train_dir)
    report = evaluate_checkpoint(
        model,
        adapter,
        args.eval_sets,
        EvalSettings(max_new_tokens=args.eval_max_new_tokens),
        limit=args.eval_questions,
        dtype=args.dtype,
        device="cpu",
    )
    return EvalSummary.of("trained" if train_dir is not None else "base", report.results)


def _store_path(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir / STORE_FILE
    env = os.environ.get("RCSD_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "rcsd") / STORE_FILE


def _new_run_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = Path("runs") / f"demo-{stamp}", 1
    while run_dir.exists():
        n += 1
        run_dir = Path("runs") / f"demo-{stamp}-{n}"
    return run_dir


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started
