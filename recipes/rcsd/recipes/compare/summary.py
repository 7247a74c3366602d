"""A comparison with seeds, summarised per arm: each measure's mean and 95 % t-interval over seeds.

    python -m rcsd.recipes.compare.summary runs/learnability-smollm2-cpu

Reads the run folder alone (`compare.yaml`, each finished run's `eval.json`, `measures/<set>/probe.json`),
so a comparison stopped part-way is summarised over the runs that finished (the table says how many).
Per set: greedy accuracy, the student's mean log-prob per token of the reference answers (its own
prompt, no privileged context) and the teacher-student top-K KL (`rcsd.recipes.compare.measure`).
Each run is one value; the interval is over seeds (`rcsd.recipes.stats.t_interval`), so it says how
much the training seed moves a measure, not how much the question sample does. An untrained base arm
runs once (greedy, deterministic): it has a value and no interval. Writes summary.json and summary.png
beside the runs, prints the table and ends with one JSON line; report.md shows the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from rcsd.recipes.compare.config import ARMS_DIR, COMPARE_FILE, DONE_MARKER, EVAL_FILE, CompareConfig, arm_dir
from rcsd.recipes.compare.measure import read_measures
from rcsd.recipes.stats import t_interval

SUMMARY_FILE = "summary.json"
PLOT_FILE = "summary.png"
# What each run's probe recorded, and how the table names it (per set).
PROBED = {
    "reference_logprob": "ref. log-prob/token (higher: closer)",
    "topk_kl": "top-K KL to teacher (lower: closer)",
}


@dataclass(frozen=True)
class Interval:
    """One measure of one arm over its finished seeds."""

    values: list[float]  # one per seed, in seed order
    mean: float
    low: float  # nan below two seeds
    high: float


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    label: str
    seeds: list[int]  # the finished ones
    measures: dict[str, Interval]  # "<measure>/<set>" -> interval


def run_values(config: CompareConfig, run_dir: Path, run_name: str) -> dict[str, float]:
    """One finished run's measures: greedy accuracy per evaluated set, the probe's per measured set."""
    evaluation = json.loads((run_dir / ARMS_DIR / run_name / EVAL_FILE).read_text())
    values = {f"accuracy/{r['data']}": r["accuracy"] for r in evaluation["results"] if r["temperature"] == 0}
    for spec in config.measure.data if config.measure else []:
        measured = read_measures(run_dir, spec).get(run_name, {})
        values.update({f"{k}/{Path(spec).stem}": measured[k] for k in PROBED if k in measured})
    return values


def summarise(config: CompareConfig, run_dir: Path) -> list[ArmSummary]:
    """Per arm (in config order), every measure over the seeds whose run finished."""
    summaries = []
    for arm in config.arms:
        runs = [r for r in config.runs() if (r.group or r.name) == arm.name]
        done = [r for r in runs if (arm_dir(run_dir, r) / DONE_MARKER).is_file()]
        per_run = [run_values(config, run_dir, r.name) for r in done]
        keys = list(dict.fromkeys(k for values in per_run for k in values))
        measures = {}
        for key in keys:
            values = [v[key] for v in per_run if key in v]
            mean, low, high = t_interval(values)
            measures[key] = Interval(values, mean, low, high)
        seeds = [r.seed if r.seed is not None else config.shared_config().seed for r in done]
        summaries.append(ArmSummary(arm.name, arm.label or arm.name, seeds, measures))
    return summaries


def table_lines(config: CompareConfig, summaries: list[ArmSummary]) -> list[str]:
    """The markdown table: one row per arm, one column per measure and set, mean [95 % t-interval]."""
    keys = list(dict.fromkeys(k for s in summaries for k in s.measures))
    head = ["arm", "seeds", *(_column(k) for k in keys)]
    lines = [
        "Each cell: mean over seeds [95 % t-interval over seeds]; accuracy in % (greedy). A run is one "
        "value; base (untrained, greedy) runs once and has no interval.",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | ---: |" + " ---: |" * len(keys),
    ]
    for s in summaries:
        cells = [s.label, str(len(s.seeds)), *(_cell(k, s.measures.get(k)) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    planned = {a.name: 0 for a in config.arms}
    for run in config.runs():
        planned[run.group or run.name] += 1
    missing = [
        f"{s.arm} ({len(s.seeds)}/{planned[s.arm]})" for s in summaries if len(s.seeds) < planned[s.arm]
    ]
    if missing:
        lines += ["", f"**Partial:** not every run has finished: {', '.join(missing)}."]
    return lines


def _column(key: str, accuracy_unit: str = "%") -> str:
    """A measure's name; the table shows accuracy in %, the plot as the fraction it holds."""
    measure, data = key.split("/", 1)
    name = f"greedy accuracy {accuracy_unit}" if measure == "accuracy" else PROBED.get(measure, measure)
    return f"{name}, {data}"


def _cell(key: str, interval: Interval | None) -> str:
    if interval is None or not interval.values:
        return "–"
    scale, digits = (100.0, 1) if key.startswith("accuracy/") else (1.0, 3)
    mean = f"{scale * interval.mean:.{digits}f}"
    if math.isnan(interval.low):
        return mean
    return f"{mean} [{scale * interval.low:.{digits}f}, {scale * interval.high:.{digits}f}]"


def plot(summaries: list[ArmSummary], path: Path, title: str) -> Path | None:
    """One panel per measure: each arm's seeds as dots, its mean and t-interval as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for s in summaries for k in s.measures))
    if not keys:
        return None
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for x, s in enumerate(summaries):
            interval = s.measures.get(key)
            if interval is None:
                continue
            ax.scatter([x] * len(interval.values), interval.values, color=f"C{x}", alpha=0.5, s=14)
            if not math.isnan(interval.low):
                error = [[interval.mean - interval.low], [interval.high - interval.mean]]
                ax.errorbar([x], [interval.mean], yerr=error, color=f"C{x}", capsize=4, marker="_", ms=14)
        ax.set_title(_column(key, accuracy_unit="(fraction)"), fontsize=9)
        ax.set_xticks(range(len(summaries)), [s.arm for s in summaries], rotation=20, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: per-arm mean and 95 % t-interval over seeds (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(config: CompareConfig, run_dir: Path) -> tuple[list[ArmSummary], list[str]]:
    """summary.json and summary.png in `run_dir`; returns the summaries and the table's lines."""
    summaries = summarise(config, run_dir)
    record = {"name": config.name, "seeds": config.seeds, "arms": [asdict(s) for s in summaries]}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(record, indent=1) + "\n")
    plot(summaries, run_dir / PLOT_FILE, config.name)
    return summaries, table_lines(config, summaries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a comparison's output_dir (holds compare.yaml)")
    args = parser.parse_args(argv)
    config = CompareConfig.model_validate(yaml.safe_load((args.run_dir / COMPARE_FILE).read_text()))
    summaries, lines = write_summary(config, args.run_dir)
    print("\n".join(lines))
    print(f"written: {args.run_dir / SUMMARY_FILE}, {args.run_dir / PLOT_FILE}")
    means = {s.arm: {k: v.mean for k, v in s.measures.items()} for s in summaries}
    print(json.dumps({"summary": str(args.run_dir / SUMMARY_FILE), "means": means}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
