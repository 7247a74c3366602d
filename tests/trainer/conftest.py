"""Real teacher and rubric services (hf backend, tiny model) on loopback, shared by the trainer tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rcsd.recipes.launch import ServiceProcess

# Hand-made questions in the shipped data format: two numeric, two multiple-choice.
QUESTIONS = [
    {"id": "t-0", "source": "test", "subject": "physics", "answer_type": "numeric",
     "question": "A ball falls for 2 s from rest. How far does it fall?", "choices": None,
     "answer": "19.6", "unit": "m", "reference_solution": "d = g t^2 / 2 = 9.8 * 4 / 2 = 19.6 m."},
    {"id": "t-1", "source": "test", "subject": "chemistry", "answer_type": "mcq",
     "question": "Which gas do plants take in for photosynthesis?",
     "choices": ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "answer": "B", "unit": None,
     "reference_solution": None},
    {"id": "t-2", "source": "test", "subject": "physics", "answer_type": "numeric",
     "question": "What is the kinetic energy of 2 kg moving at 3 m/s?", "choices": None,
     "answer": "9", "unit": "J", "reference_solution": None},
    {"id": "t-3", "source": "test", "subject": "biology", "answer_type": "mcq",
     "question": "Where is most of a cell's DNA kept?",
     "choices": ["Ribosome", "Membrane", "Nucleus", "Vacuole"], "answer": "C", "unit": None,
     "reference_solution": None},
]  # fmt: skip


@pytest.fixture(scope="session")
def questions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture(scope="session")
def trainer_services(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    """Teacher and rubric services on the tiny model; the rubric store lives for the session."""
    log_dir = tmp_path_factory.mktemp("trainer-services")
    common = ["--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32"]
    store = f"sqlite:///{log_dir / 'rubrics.db'}"
    services = {
        "teacher": ServiceProcess("teacher", [*common, "--max-top-k", "32"], log_dir),
        "rubric": ServiceProcess("rubric", [*common, "--store-url", store], log_dir),
    }
    try:
        with ThreadPoolExecutor(2) as pool:  # both load at once
            list(pool.map(lambda service: service.start(), services.values()))
        yield services
    finally:
        for service in services.values():
            service.stop()
