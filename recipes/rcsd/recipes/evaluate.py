"""`rcsd eval`: a model's accuracy on question sets, greedy and sampled (avg@n: the mean over n samples),
with its standard error and a bootstrap 95 % interval over questions (`rcsd.recipes.stats`).

    rcsd eval --model default --data scibench_heldout mmlu_physics_heldout --temperature 0 1.0 --n 4
    rcsd eval --model Qwen/Qwen3-8B --adapter runs/rcsd/checkpoints/step-000100/adapter \\
        --data ../shared/data/science/gpqa_diamond.jsonl --temperature 1.0 --top-p 0.95 --n 8 \\
        --max-new-tokens 38912
    rcsd eval --model default --data rar_science_test.jsonl --judge-url http://127.0.0.1:8003 \\
        --judge-model Qwen/Qwen3-8B     # free-form questions, graded against their rubrics

Free-form questions (answer_type free_form, with a rubric) are scored by a rubric judge
(`rcsd.trainer.judge`): the score is the rubric's weighted share met, and every criterion's verdict is
kept in the report, beside the answer it grades.

The student answers with its own prompt (`rcsd.trainer.prompts`), sampled by the hf rollout engine
(or, with --vllm-url, by a vLLM server: `rcsd.trainer.rollout.vllm`);
answers are checked by `rcsd.trainer.answers`. For each set and temperature the report gives accuracy,
the share of answers with nothing extractable, the share cut off at --max-new-tokens and the mean
completion length; it prints a table and writes a JSON report with every question's answers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rcsd.client.prompts import TEMPLATE_VERSION
from rcsd.recipes.stats import BOOTSTRAP_RESAMPLES, estimate
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.answers import read_answer
from rcsd.trainer.config import JudgeConfig
from rcsd.trainer.data.questions import Question, load_questions, resolve_data_path
from rcsd.trainer.judge import RubricJudge
from rcsd.trainer.metrics import progress_bar
from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.rollout.base import Rollout, RolloutEngine, SamplingParams

Backend = Literal["auto", "hf", "vllm"]


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int = 1024
    n: int = 4  # samples per question at a temperature > 0 (greedy takes one)
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16  # rows (questions x samples) per generate call
    template_version: str = TEMPLATE_VERSION  # the released student prompt, as training uses by default
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES  # the interval's resamples (seeded with `seed`)
    judge: JudgeConfig | None = None  # grades free-form questions; None: they are refused


@dataclass
class SetResult:
    data: str
    temperature: float
    n: int
    questions: int
    # avg@n: the mean over questions of each question's mean sample score (1/0 checked, rubric score judged)
    accuracy: float
    accuracy_se: float  # its standard error over questions
    ci_low: float  # the percentile-bootstrap 95 % interval over questions
    ci_high: float
    no_answer: float
    truncated: float
    mean_completion_tokens: float
    seconds: float
    per_question: list[dict[str, Any]] = field(default_factory=list)


def evaluate_set(
    engine: RolloutEngine,
    tokenizer: Any,
    name: str,
    questions: list[Question],
    temperature: float,
    settings: EvalSettings,
    progress: bool = True,
    judge: RubricJudge | None = None,
) -> SetResult:
    """Sample every question (n times, or once greedily) and score the final answers.

    A vLLM engine gets every question at once (the server batches them); hf gets `batch_size` answers
    per generate call."""
    n = 1 if temperature == 0 else settings.n
    per_chunk = (len(questions) or 1) if _is_server(engine) else max(1, settings.batch_size // n)
    started = time.perf_counter()
    rollouts: list[list[Rollout]] = []
    with progress_bar(len(questions) * n, f"{name} T={temperature:g}", progress, unit="answer") as bar:
        for first in range(0, len(questions), per_chunk):
            chunk = questions[first : first + per_chunk]
            prompts = [student_prompt_ids(tokenizer, q.prompt_text, settings.template_version) for q in chunk]
            params = SamplingParams(
                max_new_tokens=settings.max_new_tokens,
                temperature=temperature,
                top_p=settings.top_p,
                top_k=settings.top_k,
                seed=settings.seed + first,
            )
            rollouts += engine.sample(prompts, params, n=n)
            bar.update(len(chunk) * n)
    per_question = [_score(tokenizer, q, group, judge) for q, group in zip(questions, rollouts, strict=True)]
    samples = [s for q in per_question for s in q["samples"]]
    scores = [q["score"] for q in per_question]
    spread = estimate(scores, resamples=settings.bootstrap_resamples, seed=settings.seed)
    return SetResult(
        data=name,
        temperature=temperature,
        n=n,
        questions=len(questions),
        accuracy=spread.mean if scores else 0.0,
        accuracy_se=spread.se,
        ci_low=spread.low,
        ci_high=spread.high,
        no_answer=_mean([s["answer"] is None for s in samples]),
        truncated=_mean([s["truncated"] for s in samples]),
        mean_completion_tokens=_mean([s["tokens"] for s in samples]),
        seconds=time.perf_counter() - started,
        per_question=per_question,
    )


def _score(
    tokenizer: Any, question: Question, group: list[Rollout], judge: RubricJudge | None
) -> dict[str, Any]:
    samples = []
    for rollout in group:
        text = tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
        reading = read_answer(text, question)
        sample = {
            "answer": reading.answer,
            "right": bool(reading.correct),
            "score": float(bool(reading.correct)),
            "truncated": rollout.truncated or reading.truncated,  # out of tokens, or thinking unclosed
            "tokens": len(rollout.completion_ids),
            "text": text,
        }
        if question.answer_type == "free_form":
            assert judge is not None
            graded = judge.score(question, text)
            sample.update(
                score=graded.score, right=graded.score == 1.0, verdicts=graded.to_dict()["verdicts"]
            )
        samples.append(sample)
    return {
        "id": question.id,
        "expected": question.answer,
        "right": sum(s["right"] for s in samples),
        "score": _mean([s["score"] for s in samples]),
        "samples": samples,
    }


def _mean(values: list[float] | list[bool] | list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _is_server(engine: RolloutEngine) -> bool:
    from rcsd.trainer.rollout.vllm import VllmRollout

    return isinstance(engine, VllmRollout)


def load_model(model: str, adapter: str | None, dtype: str, device: str) -> tuple[Any, Any, str]:
    """The model (with the peft adapter merged in, if any), its tokenizer and why this dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rcsd.loading.dtype import choose_dtype
    from rcsd.trainer.student import resolve_model

    model = resolve_model(model)
    choice = choose_dtype(dtype, device)
    torch_dtype: Any = "auto" if choice.dtype == "auto" else getattr(torch, choice.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model)
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    if adapter:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, adapter).merge_and_unload()  # merged: plain generate speed
    return loaded.to(device).eval(), tokenizer, choice.reason


def format_accuracy(result: SetResult) -> str:
    """avg@n ± standard error [bootstrap 95 % interval], as fractions."""
    return f"{result.accuracy:.3f} ± {result.accuracy_se:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}]"


def print_table(results: list[SetResult]) -> None:
    head = f"{'data':<28}{'T':>5}{'n':>4}{'questions':>11}  {'avg@n ± SE [95% CI]':<32}"
    print(head + f"{'no answer':>11}{'truncated':>11}{'tokens':>8}")
    for r in results:
        print(
            f"{r.data:<28}{r.temperature:>5g}{r.n:>4}{r.questions:>11}  {format_accuracy(r):<32}"
            f"{r.no_answer:>11.3f}{r.truncated:>11.3f}{r.mean_completion_tokens:>8.0f}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rcsd eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a folder or HF id; 'default' is the bundled SmolLM2")
    parser.add_argument("--adapter", default=None, help="a peft LoRA adapter folder, merged into the model")
    parser.add_argument(
        "--vllm-url",
        default=None,
        help="sample from this vLLM OpenAI server (serving --model, with --enable-lora for --adapter)",
    )
    parser.add_argument("--data", nargs="+", required=True, help="JSONL files or shipped set names")
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.0], help="0 is greedy")
    parser.add_argument("--n", type=int, default=4, help="samples per question at temperature > 0")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=None, help="the first N questions of each set")
    parser.add_argument("--batch-size", type=int, default=16, help="answers per generate call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--template-version", default=TEMPLATE_VERSION)
    parser.add_argument("--bootstrap-resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"],
                        help="auto: a vLLM server started here where vLLM is installed, else hf")  # fmt: skip
    parser.add_argument(
        "--judge-url", default=None, help="an OpenAI-compatible server grading free-form sets"
    )
    parser.add_argument("--judge-model", default=None, help="the model name that server serves")
    parser.add_argument("--judge-api-key-env", default=None, help="the env var holding its API key")
    parser.add_argument("--judge-cache-dir", default="runs/judge-cache")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default runs/eval-<time>.json)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def checkpoint_weights(base_model: str, run_dir: Path) -> tuple[str, str | None]:
    """(model, adapter) of a run's latest checkpoint: the base model and its LoRA adapter, or full weights."""
    latest = ckpt.latest(run_dir)
    if latest is None:
        raise FileNotFoundError(f"{run_dir}: training left no checkpoint")
    weights = ckpt.weights_dir(latest)
    return (base_model, str(weights)) if weights.name == ckpt.ADAPTER_DIR else (str(weights), None)


def open_engine(
    model: str, adapter: str | None, dtype: str, device: str, batch_size: int, vllm_url: str | None = None
) -> tuple[RolloutEngine, Any, str]:
    """The rollout engine to answer with (hf here, or a vLLM server), the tokenizer, where the dtype is from."""
    if vllm_url is None:
        from rcsd.trainer.rollout.hf import HfRollout

        loaded, tokenizer, dtype_reason = load_model(model, adapter, dtype, device)
        return HfRollout(loaded, tokenizer, max_batch_size=batch_size), tokenizer, dtype_reason
    from transformers import AutoTokenizer

    from rcsd.trainer.rollout.vllm import VllmRollout
    from rcsd.trainer.student import resolve_model

    engine = VllmRollout(vllm_url)
    if adapter:
        engine.load_adapter(Path(adapter))
    return engine, AutoTokenizer.from_pretrained(resolve_model(model)), f"the vLLM server at {vllm_url}"


@dataclass
class EvalReport:
    """What `evaluate_checkpoint` measured, as `rcsd eval`, `rcsd compare` and the demo record it."""

    model: str
    adapter: str | None
    device: str
    dtype: str
    settings: EvalSettings
    data: dict[str, str]  # set name -> file
    results: list[SetResult]

    def to_json(self, **extra: Any) -> str:
        return json.dumps({**extra, **asdict(self)}, indent=1, default=_plain) + "\n"


def _plain(value: object) -> object:
    if isinstance(value, JudgeConfig):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON")


def evaluate_checkpoint(
    model: str,
    adapter: str | None,
    data: Sequence[str],
    settings: EvalSettings,
    *,
    temperatures: Sequence[float] = (0.0,),
    limit: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    vllm_url: str | None = None,
    backend: Backend = "hf",
    progress: bool = True,
) -> EvalReport:
    """Every set of `data` at every temperature, answered by `model` (+ `adapter`) with the student prompt.

    `backend` auto: a vLLM server started for this evaluation where vLLM is installed, else hf (a given
    `vllm_url` wins over both). Free-form sets need `settings.judge`."""
    import torch

    # here, not at the top: the server launcher brings rcsd.services, which a library import must not
    from rcsd.recipes.eval_server import vllm_installed, vllm_server
    from rcsd.trainer.student import resolve_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sets = {_set_name(spec): load_questions([spec])[:limit] for spec in data}
    free_form = [n for n, qs in sets.items() if any(q.answer_type == "free_form" for q in qs)]
    if free_form and settings.judge is None:
        raise ValueError(f"{free_form}: free-form questions need a judge (--judge-url, --judge-model)")
    with contextlib.ExitStack() as stack:
        if vllm_url is None and (backend == "vllm" or (backend == "auto" and vllm_installed())):
            from rcsd.loading.dtype import choose_dtype

            vllm_url = stack.enter_context(
                vllm_server(
                    resolve_model(model),
                    adapter,
                    device=device,
                    dtype=choose_dtype(dtype, device).dtype,
                    max_model_len=settings.max_new_tokens + _longest_prompt(model, sets, settings),
                )
            )
        judge = RubricJudge(settings.judge) if free_form and settings.judge else None
        if judge is not None:
            stack.callback(judge.close)
        engine, tokenizer, dtype_reason = open_engine(
            model, adapter, dtype, device, settings.batch_size, vllm_url
        )
        try:
            results = [
                evaluate_set(engine, tokenizer, name, questions, temperature, settings, progress, judge)
                for name, questions in sets.items()
                for temperature in temperatures
            ]
        finally:
            engine.close()
            del engine
            free_memory()
    paths = {_set_name(spec): str(resolve_data_path(spec)) for spec in data}
    return EvalReport(model, adapter, device, dtype_reason, settings, paths, results)


def _longest_prompt(model: str, sets: dict[str, list[Question]], settings: EvalSettings) -> int:
    from transformers import AutoTokenizer

    from rcsd.trainer.student import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    lengths = [
        len(student_prompt_ids(tokenizer, q.prompt_text, settings.template_version))
        for qs in sets.values()
        for q in qs
    ]
    return max(lengths, default=0) + 16


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    judge = None
    if args.judge_url or args.judge_model:
        if not (args.judge_url and args.judge_model):
            raise SystemExit("rcsd eval: --judge-url and --judge-model go together")
        judge = JudgeConfig(
            url=args.judge_url,
            model=args.judge_model,
            api_key_env=args.judge_api_key_env,
            cache_dir=args.judge_cache_dir,
        )
    settings = EvalSettings(
        max_new_tokens=args.max_new_tokens,
        n=args.n,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        batch_size=args.batch_size,
        template_version=args.template_version,
        bootstrap_resamples=args.bootstrap_resamples,
        judge=judge,
    )
    report = evaluate_checkpoint(
        args.model,
        args.adapter,
        args.data,
        settings,
        temperatures=args.temperature,
        limit=args.limit,
        dtype=args.dtype,
        device=args.device,
        vllm_url=args.vllm_url,
        backend=args.backend,
        progress=not args.no_progress,
    )
    out = args.out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    print_table(report.results)
    print(f"report: {out}")
    return 0


def _set_name(spec: str) -> str:
    return Path(spec).stem


def free_memory() -> None:
    """The evaluated model goes before the next one loads (matters on a GPU holding an 8B model)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
