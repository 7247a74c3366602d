"""Faults during a training run, with nothing lost: the final weights equal an uninterrupted run's.

- the teacher service is SIGKILLed between steps and kept down until the trainer's client has failed
  to reach it (seen by a spy on the client's retry policy), then restarted as by a supervisor: the
  client retries within its deadline and the run finishes;
- the trainer itself is SIGKILLed after a checkpoint: `rcsd train CONFIG --resume` continues from
  it to the same final weights.

Same seed, the tiny model, real hf services on loopback. `adam_eps=1.0` keeps Adam from turning
float rounding in near-zero gradients (another teacher process may round differently) into full
learning-rate steps, so the weights can be compared within a float tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from rcsd.client._base import BaseClient
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.train import main
from tests.fixtures.services import QUESTIONS
from tests.trainer.configs import adapter_weights, answer_config

STEPS = 4


@pytest.fixture(scope="module")
def services(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A teacher of this module's own (it gets killed) and a rubric service."""
    log_dir = tmp_path_factory.mktemp("fault-services")
    common = ["--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32"]
    started = {
        "teacher": ServiceProcess("teacher", [*common, "--max-top-k", "32"], log_dir).start(),
        "rubric": ServiceProcess(
            "rubric", [*common, "--store-url", f"sqlite:///{log_dir / 'rubrics.db'}"], log_dir
        ).start(),
    }
    yield started
    for service in started.values():
        service.stop()


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fault-data") / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def _fault_config(tiny_model_dir: Path, services: dict, questions: Path, out: Path) -> TrainConfig:
    config = answer_config(
        tiny_model_dir, services, questions, out, steps=STEPS, checkpoint_every=2, adam_eps=1.0
    )
    return config.model_copy(update={"services": config.services.model_copy(update={"deadline_s": 300})})


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, services: dict, questions: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    main(_fault_config(tiny_model_dir, services, questions, run_dir))
    return run_dir


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = read_metrics(run_dir), read_metrics(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    # the same answers were sampled and scored at every step ...
    assert [r["rollout_tokens"] for r in got] == [r["rollout_tokens"] for r in want]
    assert [r["teacher_tokens"] for r in got] == [r["teacher_tokens"] for r in want]
    # ... and the weights end where the uninterrupted run's ended
    final, expected = adapter_weights(run_dir, STEPS), adapter_weights(reference, STEPS)
    assert final.keys() == expected.keys()
    moved = [t.abs().max().item() for n, t in expected.items() if "lora_B" in n]  # B starts at 0
    assert min(moved) > 1e-5, moved
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-8, msg=name)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not after {timeout_s} s: {what}"
        time.sleep(0.05)


@dataclass(frozen=True)
class FailedAttempt:
    url: str
    path: str
    what: str  # the transport error's class or the HTTP status
    retried: bool  # the client went on to another attempt (False: it gave up and raised)


def _record_failed_attempts(monkeypatch: pytest.MonkeyPatch) -> list[FailedAttempt]:
    """Every failed attempt of every rcsd client in this process, as the client's retry policy saw it."""
    seen: list[FailedAttempt] = []
    books = BaseClient._after_failure

    def spy(self: BaseClient, call, replica, *, response=None, error=None) -> float:
        what = type(error).__name__ if error is not None else str(response.status_code)
        try:
            delay = books(self, call, replica, response=response, error=error)
        except BaseException:
            seen.append(FailedAttempt(replica.url, call.path, what, retried=False))
            raise
        seen.append(FailedAttempt(replica.url, call.path, what, retried=True))
        return delay

    monkeypatch.setattr(BaseClient, "_after_failure", spy)
    return seen


def test_teacher_killed_mid_run_is_waited_for(
    tiny_model_dir, services, questions, uninterrupted, tmp_path, monkeypatch
):
    """The teacher stays down until the trainer's client has failed to reach it at least once, so
    the run provably met the outage; then it is back, the call is retried, and the run matches."""
    run_dir = tmp_path / "run"
    config = _fault_config(tiny_model_dir, services, questions, run_dir)
    failed = _record_failed_attempts(monkeypatch)
    failure: list[BaseException] = []

    def train() -> None:
        try:
            main(config)
        except BaseException as exc:  # reported by the assertion below
            failure.append(exc)

    trainer = threading.Thread(target=train)
    trainer.start()
    metrics = run_dir / "metrics.jsonl"
    teacher = services["teacher"]
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, 300, "step 1")
    teacher.kill()  # SIGKILL between steps
    _wait_for(
        lambda: any(f.url == teacher.url for f in failed) or not trainer.is_alive(), 300, "a failed call"
    )
    teacher.start()  # back on the same port, as a supervisor would restart it
    trainer.join(timeout=600)
    assert not trainer.is_alive() and not failure, failure

    met = [f for f in failed if f.url == teacher.url]
    assert met and all(f.retried for f in met), failed  # failed, and every failure was tried again
    _assert_same_run(run_dir, uninterrupted)


def test_trainer_killed_then_resumed(tiny_model_dir, services, questions, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    config_file = tmp_path / "config.yaml"
    config = _fault_config(tiny_model_dir, services, questions, run_dir)
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [sys.executable, "-m", "rcsd.recipes.cli", "train", str(config_file)]

    with open(tmp_path / "trainer.log", "wb") as log:
        trainer = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            marker = ckpt.checkpoint_dir(run_dir, 2) / ckpt.COMPLETE_MARKER
            _wait_for(lambda: marker.is_file() or trainer.poll() is not None, 300, "checkpoint 2")
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
        finally:
            trainer.kill()  # SIGKILL: no cleanup, no last checkpoint
            trainer.wait()
    assert ckpt.latest(run_dir) == ckpt.checkpoint_dir(run_dir, 2)  # killed before the end

    subprocess.run([*command, "--resume"], check=True, capture_output=True, timeout=600)
    _assert_same_run(run_dir, uninterrupted)
