"""Reliability suites: each runs short in `make test` and long (`-m reliability`) in `make reliability`.

A test marked `reliability` is the long version: it is skipped unless the run selects the marker
(`pytest -m reliability`), so a plain `pytest` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rcsd.recipes.launch import ServiceProcess


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "reliability" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long version: run it with `make reliability` (pytest -m reliability)")
    for item in items:
        if item.get_closest_marker("reliability") is not None:
            item.add_marker(skip)


def tiny_service(service: str, model_dir: Path, log_dir: Path, *extra: str) -> ServiceProcess:
    """A service on the tiny fp32 model with the hf backend (not started); max_queue 4, so that a
    short load meets 429s."""
    args = ["--backend", "hf", "--model", str(model_dir), "--dtype", "float32", "--max-queue", "4", *extra]
    return ServiceProcess(service, args, log_dir)


@pytest.fixture(scope="package")
def teacher_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    server = tiny_service("teacher", tiny_model_dir, tmp_path_factory.mktemp("teacher"), "--max-top-k", "8")
    yield server.start()
    server.stop()


@pytest.fixture(scope="package")
def rubric_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("rubric")
    server = tiny_service(
        "rubric", tiny_model_dir, folder, "--store-url", f"sqlite:///{folder / 'rubrics.db'}"
    )
    yield server.start()
    server.stop()
