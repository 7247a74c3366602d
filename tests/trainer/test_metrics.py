"""Run metrics: JSONL per step (a resumed run's repeated steps keep the last), PNG curves."""

from __future__ import annotations

from pathlib import Path

from rcsd.trainer.metrics import NullLogger, RunLogger, plot_curves, read_metrics


def test_jsonl_and_curves(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, total_steps=3, first_step=0, tensorboard=False, progress=False)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 1.0 / step, "kl_sampled": 0.5, "time/step": 0.1})
    logger.close()
    resumed = RunLogger(tmp_path, total_steps=3, first_step=2, tensorboard=False, progress=False)
    resumed.log(3, {"loss": 0.25, "kl_sampled": 0.4, "time/step": 0.1})
    resumed.close()
    NullLogger().log(1, {"loss": 9.0})

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["loss"] == 0.25
    written = plot_curves(tmp_path)
    assert {p.name for p in written} == {"loss.png", "kl_sampled.png", "time_step.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
