"""What a demo run found, and the three ways it is shown: the terminal, summary.md and summary.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rcsd.client.protocol import CONTEXT_MODES, Criterion

STUDENT_COLUMN = "student (in-process)"


@dataclass
class RubricResult:
    rubric_id: str | None = None
    criteria: list[dict[str, object]] = field(default_factory=list)
    cached: bool = False
    attempts: int = 0
    error: str | None = None  # why there is no rubric (e.g. 422 rubric_generation_failed)

    @classmethod
    def of(cls, rubric_id: str, criteria: list[Criterion], cached: bool, attempts: int) -> RubricResult:
        return cls(rubric_id, [c.model_dump() for c in criteria], cached, attempts)

    def describe(self) -> str:
        if self.error is not None:
            return "none (the rubric service answered with an error; modes that need a rubric are skipped)"
        if self.cached:
            return f"{len(self.criteria)} criteria, cached: true (from the store, nothing generated)"
        plural = "s" if self.attempts != 1 else ""
        return f"{len(self.criteria)} criteria, cached: false (generated, {self.attempts} attempt{plural})"


@dataclass
class QuestionResult:
    id: str
    source: str
    subject: str
    question: str
    reference_answer: str
    rubric: RubricResult = field(default_factory=RubricResult)
    answer_text: str = ""
    answer_token_ids: list[int] = field(default_factory=list)
    student_mean_logprob: float | None = None
    teacher_mean_logprob: dict[str, float] = field(default_factory=dict)  # context mode -> mean
    skipped_modes: dict[str, str] = field(default_factory=dict)  # context mode -> why
    context_lengths: dict[str, int] = field(default_factory=dict)  # context mode -> teacher tokens
    none_context_matches_student_prompt: bool | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall seconds


@dataclass
class DemoSummary:
    run_dir: str
    backend: str
    model: str
    model_revision: str
    rubric_store: str
    services: dict[str, dict[str, str]]  # teacher / rubric -> url, backend (as /v1/info says), log, exit
    template_versions: dict[str, str]
    settings: dict[str, object]
    started_at: str = ""
    steps_s: dict[str, float] = field(default_factory=dict)
    questions: list[QuestionResult] = field(default_factory=list)
    total_s: float = 0.0

    def headline(self) -> str:
        return f"backend {self.backend} | model {self.model} | run folder {self.run_dir}"

    def write(self, run_dir: Path) -> tuple[Path, Path]:
        md_path, json_path = run_dir / "summary.md", run_dir / "summary.json"
        md_path.write_text(to_markdown(self))
        json_path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return md_path, json_path


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def rubric_status(q: QuestionResult) -> str:
    if q.rubric.error is not None:
        return "failed (nothing stored; the next run tries again)"
    return "from the store (cached: true)" if q.rubric.cached else "generated and stored (cached: false)"


def mode_cell(q: QuestionResult, mode: str) -> str:
    return _fmt(q.teacher_mean_logprob.get(mode)) if mode in q.teacher_mean_logprob else "skipped"


def _criteria_lines(rubric: RubricResult) -> list[str]:
    lines = []
    for c in rubric.criteria:
        weight = "pitfall" if int(str(c["weight"])) < 0 else f"weight {c['weight']}"
        lines.append(f"- [{weight}] **{c['title']}**: {c['description']}")
    return lines


def _question_markdown(i: int, q: QuestionResult) -> list[str]:
    lines = [f"## {i}. {q.id} ({q.source}, {q.subject})", "", "**Question**", "", q.question, ""]
    lines += [f"**Rubric** — {q.rubric.describe()}", ""]
    if q.rubric.error is not None:
        lines += [f"> {q.rubric.error}", ""]
    else:
        lines += [f"`{q.rubric.rubric_id}`", "", *_criteria_lines(q.rubric), ""]
    lines += [
        f"**Sampled answer** ({len(q.answer_token_ids)} tokens)",
        "",
        "```text",
        q.answer_text,
        "```",
        "",
    ]
    lines += ["| context mode | mean teacher log-prob |", "| --- | ---: |"]
    for mode in CONTEXT_MODES:
        reason = f" ({q.skipped_modes[mode]})" if mode in q.skipped_modes else ""
        lines.append(f"| {mode} | {mode_cell(q, mode)}{reason} |")
    lines.append(f"| {STUDENT_COLUMN} | {_fmt(q.student_mean_logprob)} |")
    steps = ", ".join(f"{step} {s:.1f} s" for step, s in q.seconds.items())
    return [*lines, "", f"Time: {steps}", ""]


def _mode_table_markdown(questions: list[QuestionResult]) -> list[str]:
    """Modes as rows, questions as columns (as in the terminal), then which question is which."""
    columns = [f"Q{i}" for i, _ in enumerate(questions, 1)]
    lines = ["| context mode | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for mode in CONTEXT_MODES:
        lines.append(f"| {mode} | " + " | ".join(mode_cell(q, mode) for q in questions) + " |")
    student = " | ".join(_fmt(q.student_mean_logprob) for q in questions)
    lines += [f"| {STUDENT_COLUMN} | {student} |", ""]
    return lines + [f"- Q{i} = {q.id}; its rubric: {rubric_status(q)}" for i, q in enumerate(questions, 1)]


def to_markdown(s: DemoSummary) -> str:
    lines = [
        "# rcsd demo: the teacher scores one student answer under every context mode",
        "",
        f"{s.headline()}",
        "",
        f"Started {s.started_at}; total wall time {s.total_s:.1f} s. Rubric store: `{s.rubric_store}`.",
        "",
        *(
            f"- {name} service: {info['url']}, backend {info['backend']}, log `{info['log']}`, {info['exit']}"
            for name, info in s.services.items()
        ),
        "",
        "Mean teacher log-prob per token of the same sampled answer, per context mode. `none` is the "
        "student's own prompt, so it matches the student's log-prob computed in-process; the privileged "
        "modes (rubric, reference) change how the teacher scores the very same tokens.",
        "",
        *_mode_table_markdown(s.questions),
    ]
    lines += ["", "| step | seconds |", "| --- | ---: |"]
    lines += [f"| {step} | {sec:.1f} |" for step, sec in s.steps_s.items()]
    lines += [f"| **total** | **{s.total_s:.1f}** |", ""]
    for i, q in enumerate(s.questions, 1):
        lines += _question_markdown(i, q)
    settings = ", ".join(f"{k}={v}" for k, v in s.settings.items())
    lines += [f"Settings: {settings}. Templates: {s.template_versions}.", ""]
    return "\n".join(lines)


def print_summary(console: Console, s: DemoSummary) -> None:
    """The per-question detail, then the table that is the point, then timings and the headline."""
    for i, q in enumerate(s.questions, 1):
        body: list[object] = [Markdown(f"**Question**\n\n{q.question}")]
        rubric_text = f"**Rubric** — {q.rubric.describe()}\n\n"
        if q.rubric.error is not None:
            rubric_text += f"> {q.rubric.error}"
        else:
            rubric_text += "\n".join(_criteria_lines(q.rubric))
        body.append(Markdown(rubric_text))
        body.append(Markdown(f"**Sampled answer** ({len(q.answer_token_ids)} tokens)"))
        body.append(Panel(Text(q.answer_text or "(empty)"), border_style="dim"))
        modes = Table("context mode", "mean teacher log-prob", box=None, padding=(0, 2))
        for mode in CONTEXT_MODES:
            reason = f" [dim]({escape(q.skipped_modes[mode])})[/dim]" if mode in q.skipped_modes else ""
            modes.add_row(mode, mode_cell(q, mode) + reason)
        modes.add_row(f"[dim]{STUDENT_COLUMN}[/dim]", f"[dim]{_fmt(q.student_mean_logprob)}[/dim]")
        body.append(modes)
        body.append(Markdown("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in q.seconds.items())))
        console.print(Panel(Group(*body), title=f"{i}. {q.id} ({q.source}, {q.subject})", title_align="left"))

    # modes as rows, questions as columns: fits a narrow terminal, and a column reads top to bottom
    table = Table(title="Mean teacher log-prob per token of the same answer, per context mode")
    table.add_column("context mode")
    for i, _ in enumerate(s.questions, 1):
        table.add_column(f"Q{i}", justify="right")
    for mode in CONTEXT_MODES:
        table.add_row(mode, *(mode_cell(q, mode) for q in s.questions))
    table.add_row(
        f"[dim]{STUDENT_COLUMN}[/dim]", *(f"[dim]{_fmt(q.student_mean_logprob)}[/dim]" for q in s.questions)
    )
    console.print(table)
    for i, q in enumerate(s.questions, 1):
        console.print(f"  Q{i} = {q.id}; its rubric: {rubric_status(q)}", markup=False)
    steps = Table("step", "seconds", title="Where the time went")
    for step, sec in s.steps_s.items():
        steps.add_row(step, f"{sec:.1f}")
    steps.add_row("[bold]total[/bold]", f"[bold]{s.total_s:.1f}[/bold]")
    console.print(steps)
    console.print(f"Total wall time {s.total_s:.1f} s", markup=False)
    console.print(s.headline(), markup=False)
