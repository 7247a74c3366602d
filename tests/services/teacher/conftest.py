"""One teacher service process per backend per session: engine starts are expensive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.recipes.launch import ServiceProcess

BACKENDS = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


def _teacher(model_dir: Path, backend: str, log_dir: Path, *extra: str) -> ServiceProcess:
    args = ["--backend", backend, "--model", str(model_dir), "--dtype", "float32", "--max-top-k", "32"]
    return ServiceProcess("teacher", [*args, *extra], log_dir).start()


@pytest.fixture(scope="session")
def teacher_servers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    """Started lazily per backend, shared by every test of the session."""
    started: dict[str, ServiceProcess] = {}
    log_dir = tmp_path_factory.mktemp("teacher-logs")

    class Lazy(dict):
        def __missing__(self, backend: str) -> ServiceProcess:
            started[backend] = _teacher(tiny_model_dir, backend, log_dir)
            self[backend] = started[backend]
            return started[backend]

    yield Lazy()
    for server in started.values():
        server.stop()


@pytest.fixture(params=BACKENDS)
def teacher(request: pytest.FixtureRequest, teacher_servers: dict[str, ServiceProcess]) -> ServiceProcess:
    return teacher_servers[request.param]


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir: Path) -> tuple[torch.nn.Module, object]:
    """The same weights loaded independently, for plain `model(input_ids).logits` references."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)
