"""Run metrics: JSONL per step (a resumed run's repeated steps keep the last), PNG curves."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcsd.trainer.metrics import NullLogger, RunLogger, plot_curves, progress_bar, read_metrics


def test_jsonl_and_curves(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, total_steps=3, first_step=0, progress=False)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 1.0 / step, "kl_sampled": 0.5, "time/step": 0.1})
    logger.close()
    resumed = RunLogger(tmp_path, total_steps=3, first_step=2, progress=False)
    resumed.log(3, {"loss": 0.25, "kl_sampled": 0.4, "time/step": 0.1})
    resumed.close()
    NullLogger().log(1, {"loss": 9.0})

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["loss"] == 0.25
    written = plot_curves(tmp_path)
    assert {p.name for p in written} == {"loss.png", "kl_sampled.png", "time_step.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_every_sink_gets_the_same_numbers(tmp_path: Path, monkeypatch) -> None:
    """report_to [jsonl, tensorboard, wandb], W&B offline (no network): the same values at the same steps."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    steps = {1: {"loss": 0.75, "kl_sampled": 0.5}, 2: {"loss": 0.5, "kl_sampled": 0.25}}
    logger = RunLogger(
        tmp_path,
        total_steps=2,
        first_step=0,
        progress=False,
        report_to=["jsonl", "tensorboard", "wandb"],
        config={"method": "rcsd"},
    )
    run = logger._sinks[-1]._run
    logged, real_log = [], run.log
    run.log = lambda metrics, step: (logged.append((step, dict(metrics))), real_log(metrics, step=step))
    for step, metrics in steps.items():
        logger.log(step, metrics)
    logger.close()

    assert {r["step"]: {k: v for k, v in r.items() if k != "step"} for r in read_metrics(tmp_path)} == steps
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("loss", "kl_sampled"):
        assert {e.step: e.value for e in events.Scalars(key)} == {s: m[key] for s, m in steps.items()}
    # wandb 0.31 writes the history through its Go core into a binary file that no public API reads
    # back offline; what it was handed is recorded by a spy around the real run's log()
    assert logged == [(step, metrics) for step, metrics in steps.items()]
    assert dict(run.config)["method"] == "rcsd"
    [offline] = (tmp_path / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb")), "the offline run, for a later `wandb sync`"


def test_old_configs_with_tensorboard_load() -> None:
    from rcsd.trainer.config import TrainConfig

    assert TrainConfig().report_to == ["jsonl"]
    assert TrainConfig.model_validate({"tensorboard": True}).report_to == ["jsonl", "tensorboard"]
    assert TrainConfig.model_validate({"tensorboard": False}).report_to == ["jsonl"]
    assert TrainConfig.model_validate({"report_to": ["jsonl", "wandb"]}).report_to == ["jsonl", "wandb"]


def test_line_progress_off_a_terminal(capsys) -> None:
    """stderr is not a TTY under pytest: whole lines, no carriage returns."""
    bar = progress_bar(3, "train", True, unit="step", every=0)
    for loss in (0.3, 0.2, 0.1):
        bar.set_postfix({"loss": loss})
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("train: 3/3 steps") and err.splitlines()[-1].endswith("loss=0.1")
