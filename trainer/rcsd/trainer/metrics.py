"""Where a run's numbers go: per-step JSONL, optional TensorBoard, PNG curves at the end, a progress bar.

`RunLogger` is built once by rank 0; other ranks get `NullLogger`, so the loop calls `log(...)`
everywhere without asking who it is (nanoGPT's null-logger idea).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

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
    """metrics.jsonl (appended to, so a resumed run continues it), TensorBoard if asked, a bar."""

    def __init__(
        self, run_dir: Path, *, total_steps: int, first_step: int, tensorboard: bool, progress: bool
    ) -> None:
        self.run_dir = run_dir
        self._jsonl = open(run_dir / METRICS_FILE, "a")  # closed in close()
        self._writer = _tensorboard_writer(run_dir) if tensorboard else None
        self._bar = tqdm(total=total_steps, initial=first_step, desc="train", disable=not progress)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, step)
        self._bar.update(1)
        shown = {k: metrics[k] for k in ("loss", "kl_sampled", "reward_mean", "time/step") if k in metrics}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

    def close(self) -> None:
        self._bar.close()
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(run_dir: Path) -> Any:  # torch.utils.tensorboard is optional
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "tensorboard=true needs the tensorboard package (`pip install tensorboard`)"
        ) from exc
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


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
