"""`rcsd demo` (`make demo`): the teacher and rubric services working together, on this machine.

1. prepare the embedded SmolLM2-135M-Instruct (once; later runs reuse it);
2. start both services as real processes on loopback (`rcsd serve teacher|rubric`), logs in the run folder;
3. get a rubric for each shipped science question from the rubric service (stored in the cache dir, so
   a second run gets them back `cached: true`);
4. sample one answer per question from the student (the same model, in this process, fixed seed);
5. score each answer's token ids, verbatim, with the teacher under every context mode;
6. stop the services (SIGTERM, wait) and write `runs/demo-<timestamp>/summary.md` and `summary.json`.

A rubric the small model fails to generate (422 rubric_generation_failed) is shown and skipped: the
modes that need it are skipped for that question, the rest of the demo goes on.
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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from rcsd.client import (
    Criterion,
    RcsdError,
    RubricBounds,
    RubricClient,
    RubricRequest,
    TeacherClient,
    TeacherRequest,
)
from rcsd.client.protocol import CONTEXT_MODES
from rcsd.models.dtype import DTYPES
from rcsd.services.demo.processes import DemoService
from rcsd.services.demo.questions import DemoQuestion, load_questions
from rcsd.services.demo.student import Student
from rcsd.services.demo.summary import DemoSummary, QuestionResult, RubricResult, print_summary

STORE_FILE = "demo-rubrics.db"
# A 135M model keeps writing criteria (and repeating their titles) when allowed 25; with at most 6,
# most of its rubrics pass the service's checks, and each takes seconds instead of minutes.
DEFAULT_MIN_CRITERIA, DEFAULT_MAX_CRITERIA = 3, 6
RUBRIC_TIMEOUT_S = 900.0  # one rubric, all its attempts, on a busy CPU
TEACHER_TIMEOUT = httpx.Timeout(timeout=300.0, connect=5.0)
T = TypeVar("T")


def default_backend() -> str:
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rcsd demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
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
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="all models (auto: bfloat16 where the CPU has it natively, else float32)",
    )
    parser.add_argument("--questions", type=int, default=None, help="use the first N shipped questions")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="length of a sampled answer")
    parser.add_argument("--temperature", type=float, default=0.7, help="student sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="question i is sampled with seed + i")
    parser.add_argument("--min-criteria", type=int, default=DEFAULT_MIN_CRITERIA, help="rubric bounds")
    parser.add_argument("--max-criteria", type=int, default=DEFAULT_MAX_CRITERIA, help="rubric bounds")
    parser.add_argument("--rubric-max-tokens", type=int, default=1024, help="length limit of one rubric")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for a service")
    args = parser.parse_args(argv)
    if args.questions is not None and args.questions < 1:
        parser.error("--questions must be at least 1")
    return args


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


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, console = time.perf_counter(), Console()
    started_at = datetime.now().astimezone().isoformat(timespec="seconds")
    backend = args.backend or default_backend()
    run_dir = (args.run_dir or _new_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    store = _store_path(args.cache_dir).resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}

    if args.model is None:
        from rcsd.models.default import prepare_default_model

        console.print("Preparing SmolLM2-135M-Instruct (converted once from the bundled GGUF, then reused)")
        model_dir, steps["prepare model"] = _timed(lambda: prepare_default_model(args.cache_dir))
    else:
        model_dir = args.model
    model_dir = model_dir.resolve()
    questions = load_questions(args.questions)
    results = [QuestionResult(q.id, q.source, q.subject, q.question, q.reference_answer) for q in questions]
    console.print(f"Backend {backend}, model {model_dir}, run folder {run_dir}", markup=False)

    teacher, rubric = _services(backend, model_dir, args.dtype, store, run_dir)
    failures = 0
    try:
        with _progress(console) as progress:
            student, steps["start services"] = _timed(
                lambda: _start(progress, args, teacher, rubric, model_dir)
            )
            summary = _new_summary(args, backend, model_dir, run_dir, store, teacher, rubric, student)
            summary.started_at = started_at
            for name, info in summary.services.items():
                console.print(
                    f"{name} service: {info['url']}, backend {info['backend']}, log {info['log']}",
                    markup=False,
                )
            _, steps["rubrics"] = _timed(lambda: _rubrics(progress, args, rubric.url, questions, results))
            _, steps["sample answers"] = _timed(lambda: _sample(progress, args, student, questions, results))
            failures, steps["teacher scoring"] = _timed(
                lambda: _score(progress, teacher.url, student, questions, results)
            )
    except (RuntimeError, TimeoutError, RcsdError) as exc:  # a service did not start, or went away
        console.print(f"[red]The demo stopped:[/red] {escape(str(exc))}")
        return 1
    finally:
        with console.status("Stopping the services (SIGTERM, then waiting for a clean exit)"):
            _, steps["stop services"] = _timed(lambda: [s.stop() for s in (teacher, rubric)])
        for service in (teacher, rubric):
            console.print(f"{service.service} service: {service.exit_status()}", markup=False)

    for service in (teacher, rubric):
        summary.services[service.service]["exit"] = service.exit_status()
    summary.steps_s, summary.questions = steps, results
    summary.total_s = time.perf_counter() - started
    md_path, json_path = summary.write(run_dir)
    print_summary(console, summary)
    console.print(f"Wrote {md_path} and {json_path}", markup=False)
    return 1 if failures else 0


def _services(
    backend: str, model_dir: Path, dtype: str, store: Path, run_dir: Path
) -> tuple[DemoService, DemoService]:
    common = ["--model", str(model_dir), "--dtype", dtype] + (
        ["--kv-cache-gb", "1"] if backend == "vllm" else []
    )
    teacher = DemoService("teacher", backend, common, run_dir)
    rubric = DemoService("rubric", backend, [*common, "--store-url", f"sqlite:///{store}"], run_dir)
    return teacher, rubric


def _start(
    progress: Progress, args: argparse.Namespace, teacher: DemoService, rubric: DemoService, model: Path
) -> Student:
    """Both services load their engines while this process loads the student."""
    task = progress.add_task("Starting the teacher and rubric services", total=3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        starting = [pool.submit(service.start, args.ready_timeout) for service in (teacher, rubric)]
        student = Student(model, dtype=args.dtype)
        progress.advance(task)
        for future in starting:
            future.result()
            progress.advance(task)
    return student


def _new_summary(
    args: argparse.Namespace,
    backend: str,
    model_dir: Path,
    run_dir: Path,
    store: Path,
    teacher: DemoService,
    rubric: DemoService,
    student: Student,
) -> DemoSummary:
    with TeacherClient(teacher.url, timeout=TEACHER_TIMEOUT) as client:
        teacher_info = client.check_compatible(student.tokenizer)  # same tokenizer, or the ids mean nothing
    with RubricClient(rubric.url) as client:
        rubric_info = client.info()
    services = {
        process.service: {
            "url": process.url,
            "backend": info.backend,
            "log": str(process.log_path),
            "exit": "",
        }
        for process, info in ((teacher, teacher_info), (rubric, rubric_info))
    }
    return DemoSummary(
        run_dir=str(run_dir),
        backend=backend,
        model=str(model_dir),
        model_revision=teacher_info.model.revision,
        rubric_store=str(store),
        services=services,
        template_versions={"teacher": teacher_info.template_version, "rubric": rubric_info.template_version},
        settings={
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "seed": args.seed,
            "criteria": f"{args.min_criteria}..{args.max_criteria}",
            "rubric_max_tokens": args.rubric_max_tokens,
        },
    )


def _rubrics(
    progress: Progress,
    args: argparse.Namespace,
    url: str,
    questions: list[DemoQuestion],
    results: list[QuestionResult],
) -> None:
    """All at once, so the service batches them; a failed rubric is recorded, never raised."""
    task = progress.add_task("Rubrics (from the store, or generated once)", total=len(questions))
    bounds = RubricBounds(min_criteria=args.min_criteria, max_criteria=args.max_criteria)

    def one(client: RubricClient, q: DemoQuestion) -> tuple[RubricResult, float]:
        request = RubricRequest(
            question=q.question,
            reference_answer=q.reference_answer,
            bounds=bounds,
            max_tokens=args.rubric_max_tokens,
        )
        started = time.perf_counter()
        try:
            r = client.generate(request, request_id=f"demo-rubric-{q.id}")
            rubric = RubricResult.of(r.rubric_id, r.criteria, r.cached, r.attempts)
        except RcsdError as exc:
            rubric = RubricResult(error=str(exc))
        return rubric, time.perf_counter() - started

    with RubricClient(
        url,
        timeout=httpx.Timeout(RUBRIC_TIMEOUT_S, connect=5.0),
        deadline=2 * RUBRIC_TIMEOUT_S,
        max_retries=2,
    ) as client:
        with ThreadPoolExecutor(max_workers=len(questions)) as pool:
            futures = {
                pool.submit(one, client, q): result for q, result in zip(questions, results, strict=True)
            }
            for future in as_completed(futures):
                result = futures[future]
                result.rubric, result.seconds["rubric"] = future.result()
                progress.advance(task)
                if result.rubric.error is not None:
                    progress.console.print(
                        f"[yellow]No rubric for {result.id}:[/yellow] {escape(result.rubric.error)}"
                    )


def _sample(
    progress: Progress,
    args: argparse.Namespace,
    student: Student,
    questions: list[DemoQuestion],
    results: list[QuestionResult],
) -> None:
    task = progress.add_task("Sampling one answer per question (student, in-process)", total=len(questions))
    for i, (q, result) in enumerate(zip(questions, results, strict=True)):
        answer, result.seconds["sample"] = _timed(
            lambda q=q, i=i: student.sample(
                q.question,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                seed=args.seed + i,
            )
        )
        result.answer_text, result.answer_token_ids = answer.text, answer.token_ids
        result.student_mean_logprob = sum(answer.logprobs) / len(answer.logprobs) if answer.logprobs else None
        progress.advance(task)


def _score(
    progress: Progress,
    url: str,
    student: Student,
    questions: list[DemoQuestion],
    results: list[QuestionResult],
) -> int:
    """One batch per question (its answer under each mode it can have); returns the failed questions."""
    task = progress.add_task("Teacher scoring under every context mode", total=len(questions))
    failures = 0
    with TeacherClient(url, timeout=TEACHER_TIMEOUT) as client:
        client.check_compatible(student.tokenizer)
        for q, result in zip(questions, results, strict=True):
            criteria = [Criterion.model_validate(c) for c in result.rubric.criteria] or None
            modes = [m for m in CONTEXT_MODES if criteria is not None or "rubric" not in m]
            result.skipped_modes = {m: "no rubric" for m in CONTEXT_MODES if m not in modes}
            groups = [
                TeacherRequest(  # each mode gets only the privileged material it shows the teacher
                    question=q.question,
                    reference_answer=q.reference_answer if "reference" in mode else None,
                    rubric=criteria if "rubric" in mode else None,
                    context_mode=mode,  # type: ignore[arg-type]
                    completions=[result.answer_token_ids],
                    return_context_ids=mode == "none",
                )
                for mode in modes
            ]
            started = time.perf_counter()
            try:
                responses = client.score_batch(groups, request_id=f"demo-score-{q.id}")
            except RcsdError as exc:
                failures += 1
                result.skipped_modes.update({m: f"scoring failed: {exc}" for m in modes})
                progress.console.print(f"[red]Scoring failed for {q.id}:[/red] {escape(str(exc))}")
            else:
                for mode, response in zip(modes, responses, strict=True):
                    logprobs_T = response.completions[0].logprobs
                    result.teacher_mean_logprob[mode] = float(logprobs_T.mean())
                    result.context_lengths[mode] = response.context_length
                    if response.context_ids is not None:
                        prompt = student.prompt_ids(q.question)
                        result.none_context_matches_student_prompt = response.context_ids == prompt
            result.seconds["score"] = time.perf_counter() - started
            progress.advance(task)
    return failures
