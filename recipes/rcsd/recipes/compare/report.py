"""The comparison's report, built from the run folder's files alone (so a resumed comparison's is whole).

    report.md     setup, one table (method x data set accuracy, tokens sampled, teacher tokens, wall
                  time), the budget check, the curves, every arm's exact config: an appendix section
    curves.png    the per-step curves of all methods, one panel per metric
    results.json  the table's rows, for scripts

Tokens sampled are the student's completion tokens summed over the logged steps; teacher tokens are
what the teacher scored (context + completion) per group; train wall time is the sum of the logged
step times (model loading excluded), eval wall time the evaluation's generation time.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rcsd.loading.dtype import choose_dtype
from rcsd.recipes.compare.config import (
    COMPARE_FILE,
    CONFIGS_DIR,
    EVAL_FILE,
    ArmConfig,
    CompareConfig,
    arm_dir,
    run_label,
)
from rcsd.recipes.stats import overlaps
from rcsd.trainer.metrics import read_metrics

REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"
RESULTS_FILE = "results.json"
CURVES = ("loss", "kl_sampled", "reward_mean", "rollout_len_mean", "teacher_logprob_mean", "time/step")


@dataclass(frozen=True)
class ArmResult:
    """One row of the table, read back from an arm's folder."""

    arm: str
    label: str
    method: str
    accuracy: dict[str, float]  # column name -> avg@n
    accuracy_se: dict[str, float]  # column name -> its standard error over questions
    interval: dict[str, tuple[float, float]]  # column name -> bootstrap 95 % interval over questions
    steps: int
    answers_sampled: int
    tokens_sampled: int
    teacher_tokens: int
    train_seconds: float
    eval_seconds: float
    budget_held: bool  # every step sampled rollouts_per_step answers of at most max_new_tokens


def column(result: dict[str, Any]) -> str:
    """A table column: the set, and the temperature (avg@n: the mean over n samples, when sampled)."""
    if result["temperature"] == 0:
        return f"{result['data']} (greedy)"
    return f"{result['data']} (T={result['temperature']:g}, avg@{result['n']})"


def arm_result(config: CompareConfig, arm: ArmConfig, run_dir: Path) -> ArmResult:
    folder = arm_dir(run_dir, arm)
    evaluation = json.loads((folder / EVAL_FILE).read_text())
    records = read_metrics(folder)
    answers = [_answers(r) for r in records]
    max_new_tokens = int(config.shared_config().sampling.max_new_tokens)
    held = all(
        a == config.rollouts_per_step and r["rollout_tokens"] <= a * max_new_tokens
        for a, r in zip(answers, records, strict=True)
    )
    return ArmResult(
        arm=arm.name,
        label=run_label(arm),
        method=arm.method,
        accuracy={column(r): r["accuracy"] for r in evaluation["results"]},
        accuracy_se={column(r): r.get("accuracy_se", math.nan) for r in evaluation["results"]},
        interval={
            column(r): (r.get("ci_low", math.nan), r.get("ci_high", math.nan)) for r in evaluation["results"]
        },
        steps=len(records),
        answers_sampled=sum(answers),
        tokens_sampled=int(sum(r["rollout_tokens"] for r in records)),
        teacher_tokens=int(sum(r.get("teacher_tokens", 0.0) for r in records)),
        train_seconds=sum(r["time/step"] for r in records),
        eval_seconds=sum(r["seconds"] for r in evaluation["results"]),
        budget_held=held and (arm.method == "base" or len(records) == config.shared_config().steps),
    )


def _answers(record: dict[str, float]) -> int:
    """A step's answers from its logged tokens and mean answer length."""
    mean = record["rollout_len_mean"]
    return round(record["rollout_tokens"] / mean) if mean > 0 else 0


def write_report(config: CompareConfig, run_dir: Path) -> Path:
    """report.md, curves.png and results.json in `run_dir`; returns the report's path."""
    rows = [arm_result(config, arm, run_dir) for arm in config.runs()]
    (run_dir / RESULTS_FILE).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    curves = plot_curves(config, run_dir)
    text = "\n".join(
        [
            *_header(config),
            *_over_seeds(config, run_dir),
            *_table(rows, _reference(config)),
            "",
            *_budget(config, rows),
            "",
            *(
                [f"## Training curves\n\n![per-step curves of every method]({curves.name})\n"]
                if curves
                else []
            ),
            *_configs(config, run_dir),
        ]
    )
    path = run_dir / REPORT_FILE
    path.write_text(text)
    return path


def _header(config: CompareConfig) -> list[str]:
    shared = config.shared_config()
    spec = config.eval
    sampled = [t for t in spec.temperatures if t > 0]
    lines = [f"# Method comparison: {config.name}", ""]
    if config.smoke_test:
        lines += [
            "> **Smoke test.** Few steps, short answers and a small evaluation slice: these numbers show that",
            "> the pipeline runs end to end, not how the methods compare. Do not cite them.",
            "",
        ]
    lines += [
        f"Every method starts from `{shared.model}` ({_dtype(shared.dtype, shared.device)}, LoRA r={shared.lora.r} "
        f"alpha={shared.lora.alpha} when on), trains {shared.steps} step{'s' * (shared.steps != 1)} with seed {shared.seed} on "
        f"{', '.join(f'`{d}`' for d in shared.data)}"
        + (f" (first {shared.data_limit} questions)" if shared.data_limit else "")
        + " in the same seeded data order, and samples the same rollout budget: "
        f"{config.rollouts_per_step} answers per step of at most {shared.sampling.max_new_tokens} tokens "
        f"(temperature {shared.sampling.temperature:g}, top-p {shared.sampling.top_p:g}, "
        f"top-k {shared.sampling.top_k}). A method with G answers per question trains on "
        f"{config.rollouts_per_step}/G questions per step. `base` is the untrained model.",
        "",
        f"Evaluation: {', '.join(f'`{d}`' for d in spec.data)}"
        + (f", first {spec.limit} questions of each" if spec.limit else "")
        + f"; at most {spec.max_new_tokens} new tokens; greedy"
        + (
            f" and avg@{spec.n} (the mean over {spec.n} samples, top-p {spec.top_p:g}, top-k {spec.top_k}) "
            f"at T={', '.join(f'{t:g}' for t in sampled)}"
            if sampled
            else ""
        )
        + (f"; free-form sets graded by the rubric judge `{spec.judge.model}`" if spec.judge else "")
        + "; answers checked by `rcsd.trainer.answers` (after the last </think>; the last boxed or "
        "stated answer, else the last marked choice or number; numeric within 5 %). Accuracy in %.",
        "",
        "## Results",
        "",
    ]
    return lines


def _over_seeds(config: CompareConfig, run_dir: Path) -> list[str]:
    """With seeds or measures: the per-arm summary over seeds (`rcsd.recipes.compare.summary`'s table)."""
    if not config.seeds and config.measure is None:
        return []
    from rcsd.recipes.compare.summary import PLOT_FILE, write_summary

    _, lines = write_summary(config, run_dir)
    return [
        "### Per arm, over seeds",
        "",
        *lines,
        "",
        f"![per-arm means and intervals over seeds]({PLOT_FILE})",
        "",
        "### Per run",
        "",
    ]


def _dtype(requested: str, device: str) -> str:
    """`auto` on a CPU says what it became on this machine (bfloat16 only where native)."""
    return (
        f"auto: {choose_dtype(requested, device).dtype}"
        if (requested, device) == ("auto", "cpu")
        else requested
    )


def _reference(config: CompareConfig) -> str | None:
    """The arm each row's intervals are compared with: the configured one, else the base arm."""
    if config.eval.reference_arm:
        return config.eval.reference_arm
    return next((a.name for a in config.runs() if a.method == "base"), None)


def _table(rows: list[ArmResult], reference: str | None) -> list[str]:
    columns = list(dict.fromkeys(c for r in rows for c in r.accuracy))
    ref = next((r for r in rows if r.arm == reference), None)
    head = ["method", *columns, "steps", "answers sampled", "tokens sampled", "teacher tokens"]
    head += ["train wall (s)", "eval wall (s)"]
    head += [f"95 % interval vs {ref.label}"] if ref else []
    lines = [
        "Accuracy in %: avg@n ± standard error [bootstrap 95 % interval], both over questions.",
        "",
        "| " + " | ".join(head) + " |",
        "| --- |" + " ---: |" * (len(head) - 1),
    ]
    for r in rows:
        cells = [r.label, *(_cell(r, c) for c in columns), str(r.steps)]
        cells += [f"{r.answers_sampled:,}", f"{r.tokens_sampled:,}", f"{r.teacher_tokens:,}"]
        cells += [f"{r.train_seconds:.1f}", f"{r.eval_seconds:.1f}"]
        cells += [comparison(r, ref, columns)] if ref else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison(row: ArmResult, ref: ArmResult, columns: list[str]) -> str:
    """Whether the row's intervals overlap the reference's: "overlaps", or the columns where they do not
    (above or below); "reference" on the reference's own row."""
    if row.arm == ref.arm:
        return "reference"
    apart = []
    for c in columns:
        ours, theirs = row.interval.get(c), ref.interval.get(c)
        if ours is None or theirs is None or any(math.isnan(v) for v in (*ours, *theirs)):
            continue
        if not overlaps(ours, theirs):
            apart.append(f"{'above' if ours[0] > theirs[1] else 'below'} on {c}")
    return "overlaps on every set" if not apart else "separate: " + "; ".join(apart)


def _cell(row: ArmResult, column: str) -> str:
    value = row.accuracy.get(column)
    if value is None or math.isnan(value):
        return "–"
    se, (low, high) = row.accuracy_se.get(column, math.nan), row.interval.get(column, (math.nan, math.nan))
    if math.isnan(se):
        return _percent(value)
    return f"{_percent(value)} ± {_percent(se)} [{_percent(low)}, {_percent(high)}]"


def _percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _budget(config: CompareConfig, rows: list[ArmResult]) -> list[str]:
    shared = config.shared_config()
    cap = shared.steps * config.rollouts_per_step * shared.sampling.max_new_tokens
    broken = [r.arm for r in rows if not r.budget_held]
    verdict = (
        "held for every arm"
        if not broken
        else f"**did not hold** for {', '.join(broken)} (see their metrics.jsonl)"
    )
    return [
        f"Budget check: each step's logged answers equal {config.rollouts_per_step} and its tokens stay "
        f"within {config.rollouts_per_step} x {shared.sampling.max_new_tokens}: {verdict}. The cap over the "
        f"run is {cap:,} sampled tokens per method; answers that end early sample fewer.",
    ]


def _configs(config: CompareConfig, run_dir: Path) -> list[str]:
    lines = [
        "## Configurations",
        "",
        f"The comparison (`{COMPARE_FILE}`), then each arm's exact training config "
        f"(`{CONFIGS_DIR}/<arm>.yaml`; service URLs are where this run found them). "
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
        f"({_cpu_and_torch()}).",
        "",
        "```yaml",
        (run_dir / COMPARE_FILE).read_text().rstrip(),
        "```",
    ]
    for arm in config.runs():
        path = run_dir / CONFIGS_DIR / f"{arm.name}.yaml"
        if path.is_file():
            lines += ["", f"### {run_label(arm)}", "", "```yaml", path.read_text().rstrip(), "```"]
    return [*lines, ""]


def _cpu_and_torch() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, {device}"


def plot_curves(config: CompareConfig, run_dir: Path) -> Path | None:
    """All trained methods' per-step curves in one PNG, one panel per metric any of them logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = {run_label(a): read_metrics(arm_dir(run_dir, a)) for a in config.runs() if a.method != "base"}
    colors = {label: f"C{i}" for i, label in enumerate(runs)}  # one colour per method in every panel
    last_step = max((r["step"] for records in runs.values() for r in records), default=1)
    keys = [k for k in CURVES if any(k in r for records in runs.values() for r in records)]
    if not keys:
        return None
    cols = 2
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(10, 3 * math.ceil(len(keys) / cols)))
    for ax, key in zip(axes.flat, keys, strict=False):
        for label, records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=label, color=colors[label])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_xlim(0.5, last_step + 0.5)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{config.name}: per-step training curves")
    fig.tight_layout()
    path = run_dir / CURVES_FILE
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
