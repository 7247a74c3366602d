"""Each run's final weights measured on fixed sets: the reference's log-prob and the teacher-student KL.

Accuracy says whether the student got an answer right; these two say whether it moved towards what
the privileged teacher knows, on the questions it trained on and on held-out ones, without the
privileged context (the student's own prompt). Every run is measured the same way, whatever its
method: the same fixed answers (the base model's greedy ones, made by the first run measured and
kept in `measures/<set>/probe_answers.json`), the same teacher context (`measure.context_mode`, each
question's own rubric, no reason-first analysis: the analysis is sampled from the student and would
differ per run). Results go to `measures/<set>/probe.json`, one entry per run (`rcsd.trainer.probe`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rcsd.recipes.compare.config import ArmConfig, CompareConfig, ServiceUrls
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer import distributed
from rcsd.trainer.config import ProbeConfig, TrainConfig
from rcsd.trainer.probe import RESULTS_FILE, Probe
from rcsd.trainer.service_calls import ServiceCalls
from rcsd.trainer.student import load_student

MEASURES_DIR = "measures"


def measure_config(config: CompareConfig, urls: ServiceUrls | None) -> TrainConfig:
    """The shared training settings with the measures' teacher context and the launched services."""
    assert config.measure is not None
    shared = config.shared_config()
    teacher = shared.teacher.model_copy(
        update={
            "context_mode": config.measure.context_mode,
            "reason_first": False,
            "rubric_source": "generated",
        }
    )
    services = shared.services
    if urls is not None:
        services = services.model_copy(
            update={
                "teacher_urls": urls.teacher_urls or services.teacher_urls,
                "rubric_urls": urls.rubric_urls or services.rubric_urls,
            }
        )
    return TrainConfig.model_validate(
        {
            **shared.model_dump(),
            "method": "rcsd",
            "teacher": teacher.model_dump(),
            "services": services.model_dump(),
        }
    )


def measure_run(
    config: CompareConfig, arm: ArmConfig, train: TrainConfig | None, run_dir: Path, urls: ServiceUrls | None
) -> dict[str, dict[str, Any]]:
    """Measure the run's final weights (the base model for `base`) on every `measure.data` set."""
    from rcsd.recipes.evaluate import free_memory

    assert config.measure is not None
    settings = measure_config(config, urls)
    dist = distributed.setup(settings.device)
    checkpoint = ckpt.latest(Path(train.output_dir)) if train is not None else None
    student = load_student(settings, dist.device, checkpoint)  # base: a fresh LoRA, B = 0, the base model
    calls = ServiceCalls(settings)
    results = {}
    try:
        for spec in config.measure.data:
            folder = measures_dir(run_dir, spec)
            folder.mkdir(parents=True, exist_ok=True)
            probe_settings = ProbeConfig(
                data=[spec],
                questions=config.measure.limit or 10**6,
                max_new_tokens=config.measure.max_new_tokens,
            )
            probe = Probe(settings.model_copy(update={"probe": probe_settings}), student, calls, folder)
            measured = probe.measure(arm.name, dist)
            assert measured is not None
            results[Path(spec).stem] = measured
    finally:
        calls.close()
        del student
        free_memory()
    return results


def measures_dir(run_dir: Path, spec: str) -> Path:
    return run_dir / MEASURES_DIR / Path(spec).stem


def read_measures(run_dir: Path, spec: str) -> dict[str, dict[str, Any]]:
    """Run name -> that run's measures on one set (empty before any run was measured)."""
    path = measures_dir(run_dir, spec) / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
