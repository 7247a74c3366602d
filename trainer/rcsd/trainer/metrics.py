"""Where a run's numbers go: per-step JSONL, TensorBoard and W&B if asked, PNG curves at the end, progress.

`RunLogger` is built once by rank 0; other ranks get `NullLogger`, so the loop calls `log(...)`
everywhere without asking who it is (nanoGPT's null-logger idea). Every sink in `report_to` gets the
same numbers at the same step; metrics.jsonl is always written (plots and resumes read it).
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
# Curves drawn at the end when the run logged them (one PNG each).
PLOTTED = (
    "loss",
    "kl_sampled",
    "teacher_logprob_mean",
    "reward_mean",
    "rollout_len_mean",
    "truncation_rate",
    "tokens_per_s",
    "time/step",
)
SHOWN = ("loss", "kl_sampled", "reward_mean", "time/step")  # beside the progress bar


class Logger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """What ranks other than 0 log to."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger:
    """metrics.jsonl (appended to, so a resumed run continues it), the `report_to` sinks, progress."""

    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int,
        first_step: int,
        progress: bool,
        report_to: Sequence[str] = ("jsonl",),
        config: dict[str, Any] | None = None,
        wandb_project: str = "rcsd",
    ) -> None:
        self.run_dir = run_dir
        self._sinks: list[Logger] = [JsonlSink(run_dir)]
        if "tensorboard" in report_to:
            self._sinks.append(TensorBoardSink(run_dir))
        if "wandb" in report_to:
            self._sinks.append(WandbSink(run_dir, config or {}, wandb_project, resume=first_step > 0))
        self._bar = progress_bar(total_steps, "train", progress, initial=first_step, unit="step", every=0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self._sinks:
            sink.log(step, metrics)
        self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in SHOWN if k in metrics}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
        for sink in self._sinks:
            sink.close()


class JsonlSink:
    def __init__(self, run_dir: Path) -> None:
        self._file = open(run_dir / METRICS_FILE, "a")  # closed in close()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Event files in run_dir/tensorboard (`tensorboard --logdir runs/`)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("report_to tensorboard needs `pip install 'rcsd[tensorboard]'`") from exc
        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """A W&B run in run_dir/wandb; `WANDB_MODE=offline` writes it there without network
    (`wandb sync` uploads it later). The run id is kept in the run folder, so a resumed run continues it."""

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, resume: bool) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("report_to wandb needs `pip install 'rcsd[wandb]'`") from exc
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self._run = wandb.init(
            project=project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


class LineProgress:
    """Progress for logs, not terminals: whole lines (no carriage returns), at most one per `every`
    seconds and at the end; `every=0` prints each update (a training step)."""

    def __init__(self, total: int, desc: str, initial: int, unit: str, every: float) -> None:
        self.total, self.desc, self.unit, self.every, self.done = total, desc, unit, every, initial
        self.started = self.last = time.perf_counter()
        self.postfix: dict[str, Any] = {}

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            shown = "".join(f" {k}={v}" for k, v in self.postfix.items())
            line = f"{self.desc}: {self.done}/{self.total} {self.unit}s, {now - self.started:.0f} s{shown}"
            print(line, file=sys.stderr, flush=True)

    def set_postfix(self, values: dict[str, Any], refresh: bool = True) -> None:
        self.postfix = dict(values)

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    total: int, desc: str, enabled: bool = True, *, initial: int = 0, unit: str = "it", every: float = 30.0
) -> Any:
    """tqdm on a terminal; `LineProgress` when stderr is a file or a pipe (Kubernetes Jobs, CI logs),
    which a carriage-return bar would fill with one endless line; nothing when disabled."""
    from tqdm import tqdm

    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc, initial, unit, every)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The run's per-step records; a resumed run's repeated steps keep their last record."""
    by_step: dict[int, dict[str, float]] = {}
    path = run_dir / METRICS_FILE
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def plot_curves(run_dir: Path) -> list[Path]:
    """One PNG per logged curve in `run_dir/plots/`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out_dir = run_dir / PLOTS_DIR
    written = []
    for key in PLOTTED:
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if not points:
            continue
        out_dir.mkdir(exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
