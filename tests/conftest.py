"""Session-wide fixtures: the tiny model every engine, service and demo test loads."""

from __future__ import annotations

from pathlib import Path

import pytest

# questions_file, trainer_services: one session-wide definition for tests/trainer and tests/recipes
pytest_plugins = ["tests.fixtures.services"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (fp32, vocab ~1000, ChatML template), built once per session (~4 s)."""
    from tests.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)
