"""What a demo run did and found, shown three ways: `report.md` for people, `summary.json`, the terminal.

The training numbers are read back from training's own folder (`train/metrics.jsonl`, `train/probe.json`,
`train/plots/`), so the report shows exactly what the trainer logged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rcsd.client import ItemError, RubricResponse
from rcsd.recipes.demo.processes import DemoService
from rcsd.recipes.evaluate import SetResult
from rcsd.recipes.stats import standard_error
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import Question
from rcsd.trainer.metrics import PLOTS_DIR, read_metrics
from rcsd.trainer.probe import LABELS as PROBE_LABELS
from rcsd.trainer.probe import RESULTS_FILE as PROBE_FILE

REPORT_FILE, SUMMARY_FILE = "report.md", "summary.json"
STEP_COLUMNS = ("loss", "kl_sampled", "teacher_logprob_mean", "rubric_fallbacks", "time/step")
CURVES = ("loss", "kl_sampled", "teacher_logprob_mean", "time_step")  # PNG names in train/plots/
EXAMPLES = 2  # rubrics shown in full
QUESTION_CHARS = 400  # a long SciBench question is cut in the report


@dataclass
class RubricOutcome:
    question_id: str
    question: str
    rubric_id: str | None = None
    criteria: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False
    attempts: int = 0
    error: str | None = None  # why there is none (e.g. 422 rubric_generation_failed)

    @classmethod
    def of(cls, question: Question, answer: RubricResponse | ItemError | str) -> RubricOutcome:
        """From a batch item: a rubric, the item's own error, or the whole request's error text."""
        outcome = cls(question.id, question.prompt_text)
        if isinstance(answer, RubricResponse):
            outcome.rubric_id, outcome.cached, outcome.attempts = (
                answer.rubric_id,
                answer.cached,
                answer.attempts,
            )
            outcome.criteria = [c.model_dump() for c in answer.criteria]
        elif isinstance(answer, ItemError):
            outcome.error = f"{answer.status} {answer.type}: {answer.message}"
        else:
            outcome.error = answer
        return outcome


@dataclass
class EvalSummary:
    model: str  # "base" or "trained"
    accuracy: float  # over every question of every set
    sets: list[dict[str, Any]]  # rcsd.recipes.evaluate.SetResult, per-question answers included

    @classmethod
    def of(cls, model: str, results: list[SetResult]) -> EvalSummary:
        right = sum(r.accuracy * r.questions for r in results)
        total = sum(r.questions for r in results)
        return cls(model, right / total if total else 0.0, [asdict(r) for r in results])


@dataclass
class DemoReport:
    run_dir: str
    backend: str
    model: str
    rubric_store: str
    config: dict[str, Any]
    services: dict[str, dict[str, str]]  # teacher / rubric -> url, log, exit
    started_at: str = ""
    rubrics: list[RubricOutcome] = field(default_factory=list)
    eval_before: EvalSummary | None = None
    eval_after: EvalSummary | None = None
    phases_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0

    @classmethod
    def start(
        cls,
        run_dir: Path,
        backend: str,
        model: Path,
        store: Path,
        config: TrainConfig,
        services: list[DemoService],
    ) -> DemoReport:
        return cls(
            run_dir=str(run_dir),
            backend=backend,
            model=str(model),
            rubric_store=str(store),
            config=config.model_dump(mode="json"),
            services={s.service: {"url": s.url, "log": str(s.log_path), "exit": ""} for s in services},
            started_at=datetime.now().astimezone().isoformat(timespec="seconds"),
        )

    @property
    def train_dir(self) -> Path:
        return Path(self.config["output_dir"])

    def training(self) -> tuple[list[dict[str, float]], dict[str, dict[str, float]]]:
        """Training's per-step metrics and its probe (before / after)."""
        probe_path = self.train_dir / PROBE_FILE
        probe = json.loads(probe_path.read_text()) if probe_path.is_file() else {}
        return read_metrics(self.train_dir), probe

    def write(self) -> tuple[Path, Path]:
        run_dir = Path(self.run_dir)
        md_path, json_path = run_dir / REPORT_FILE, run_dir / SUMMARY_FILE
        md_path.write_text(to_markdown(self))
        steps, probe = self.training()
        summary = {**asdict(self), "steps": steps, "probe": probe}
        json_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
        return md_path, json_path

    def print(self, console: Console) -> None:
        """The numbers that are the point: accuracy, divergence, time."""
        for title, header, rows in _tables(self):
            table = Table(*header, title=title)
            for row in rows:
                table.add_row(*row)
            console.print(table)
        console.print(f"Total wall time {self.total_s:.0f} s", markup=False)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _pct_se(result: dict[str, Any]) -> str:
    """Accuracy ± its standard error over questions (what the evaluation recorded)."""
    return f"{_pct(result['accuracy'])} ± {100 * result.get('accuracy_se', 0.0):.1f}"


def _accuracy_rows(r: DemoReport) -> list[list[str]]:
    if r.eval_before is None or r.eval_after is None:
        return []
    rows = []
    for before, after in zip(r.eval_before.sets, r.eval_after.sets, strict=True):
        change = 100 * (after["accuracy"] - before["accuracy"])
        rows.append(
            [
                before["data"],
                str(before["questions"]),
                _pct_se(before),
                _pct_se(after),
                f"{change:+.1f}",
            ]
        )
    change = 100 * (r.eval_after.accuracy - r.eval_before.accuracy)
    total = str(sum(s["questions"] for s in r.eval_before.sets))
    rows.append(["all", total, _pct(r.eval_before.accuracy), _pct(r.eval_after.accuracy), f"{change:+.1f}"])
    return rows


def _probe_rows(probe: dict[str, dict[str, Any]]) -> list[list[str]]:
    before, after = probe.get("before", {}), probe.get("after", {})
    return [
        [label, f"{before[key]:.4f}", f"{after[key]:.4f}", _change(before, after, key)]
        for key, label in PROBE_LABELS.items()
        if key in before and key in after
    ]


def _change(before: dict[str, Any], after: dict[str, Any], key: str) -> str:
    """After - before, ± the standard error of the per-question changes (paired: the same questions)."""
    change = f"{after[key] - before[key]:+.4f}"
    pairs = list(
        zip(before.get(f"{key}_per_question", []), after.get(f"{key}_per_question", []), strict=False)
    )
    if len(pairs) < 2:
        return change
    return f"{change} ± {standard_error([a - b for b, a in pairs]):.4f} (SE over {len(pairs)} questions)"


def _tables(r: DemoReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, for the markdown and the terminal alike."""
    steps, probe = r.training()
    step_rows = [
        [str(int(s["step"])), *(f"{s[k]:.4g}" if k in s else "—" for k in STEP_COLUMNS)] for s in steps
    ]
    phase_rows = [[name, f"{seconds:.1f}"] for name, seconds in r.phases_s.items()]
    return [
        (
            "Accuracy on held-out questions (greedy, % ± standard error over questions)",
            ["set", "questions", "before", "after", "change (points)"],
            _accuracy_rows(r),
        ),
        (
            "Teacher-student divergence on the held-out probe",
            ["measure", "before", "after", "change"],
            _probe_rows(probe),
        ),
        ("Training, step by step", ["step", *STEP_COLUMNS], step_rows),
        ("Time per phase", ["phase", "seconds"], [*phase_rows, ["total", f"{r.total_s:.1f}"]]),
    ]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _what_ran(r: DemoReport) -> list[str]:
    c = r.config
    lines = [
        f"- {name} service: {s['url']}, backend {r.backend}, log `{s['log']}`; {s['exit']}"
        for name, s in r.services.items()
    ]
    lora = f"LoRA r={c['lora']['r']}" if c["lora"]["enabled"] else "all weights"
    lines += [
        f"- student and teacher: `{r.model}` (dtype {c['dtype']}); the teacher is the frozen base model, served",
        f"- training: {c['method']}, {c['steps']} steps x {c['prompts_per_step']} questions of {', '.join(c['data'])}, "
        f"{c['rollouts_per_prompt']} answer each (at most {c['sampling']['max_new_tokens']} tokens, T={c['sampling']['temperature']}); "
        f"loss {c['loss']['name']} on the teacher's top-{c['teacher']['top_k']} with context `{c['teacher']['context_mode']}`; "
        f"{lora}, lr {c['lr']:g}. Folder `train/`: config.yaml, metrics.jsonl, plots/, checkpoints/",
        f"- rubric store: `{r.rubric_store}` (rubrics of {c['rubric']['min_criteria']}..{c['rubric']['max_criteria']} criteria)",
    ]
    if r.eval_before is not None:
        sets = ", ".join(f"{s['data']} ({s['questions']})" for s in r.eval_before.sets)
        lines.append(
            f"- evaluation: greedy answers to the first questions of {sets}, checked by `rcsd.trainer.answers`"
        )
    return lines


def _rubric_section(rubrics: list[RubricOutcome]) -> list[str]:
    generated = sum(o.error is None and not o.cached for o in rubrics)
    cached = sum(o.cached for o in rubrics)
    failed = [o for o in rubrics if o.error is not None]
    lines = [
        f"{len(rubrics)} questions: {generated} rubrics generated and stored, {cached} from the store, "
        f"{len(failed)} failed (trained with the reference-only context instead).",
        "",
    ]
    for o in [o for o in rubrics if o.error is None][:EXAMPLES]:
        question = o.question if len(o.question) <= QUESTION_CHARS else o.question[:QUESTION_CHARS] + " ..."
        lines += [f"**{o.question_id}** (`{o.rubric_id}`)", "", "> " + question.replace("\n", "\n> "), ""]
        for c in o.criteria:
            weight = "pitfall" if int(c["weight"]) < 0 else f"weight {c['weight']}"
            lines.append(f"- [{weight}] **{c['title']}**: {c['description']}")
        lines.append("")
    lines += [f"- no rubric for {o.question_id}: {o.error}" for o in failed]
    return lines


def to_markdown(r: DemoReport) -> str:
    lines = [
        "# rcsd demo: Rubric-Conditioned Self-Distillation, end to end",
        "",
        f"Started {r.started_at}; total wall time {r.total_s:.0f} s ({r.total_s / 60:.1f} min). Run folder `{r.run_dir}`.",
        "",
        "## What ran",
        "",
        *_what_ran(r),
        "",
    ]
    for title, header, rows in _tables(r):
        lines += [f"## {title}", "", *_markdown_table(header, rows), ""]
    plots = [name for name in CURVES if (r.train_dir / PLOTS_DIR / f"{name}.png").is_file()]
    if plots:
        lines += ["## Curves", "", *(f"![{name}](train/{PLOTS_DIR}/{name}.png)" for name in plots), ""]
    lines += ["## Rubrics", "", *_rubric_section(r.rubrics), ""]
    lines += [
        "## Reading these numbers",
        "",
        "A handful of steps on a 135M model: accuracy on a few dozen questions moves by noise, if at all. "
        "What distillation changes first is how close the student is to the rubric-conditioned teacher: "
        "`kl_sampled` per step, and the probe's divergence on held-out questions it never trained on. "
        "For a real run, see `rcsd train` and the recipes in `rcsd/trainer/configs/`.",
        "",
    ]
    return "\n".join(lines)
