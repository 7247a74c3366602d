"""Tensor and pipeline parallel sizes go from a service's settings (flag or env var) to vLLM's engine args.

No engine starts: `engine_args` builds the real `AsyncEngineArgs` that `AsyncLLM.from_engine_args` gets.
"""

from __future__ import annotations

import pytest

from rcsd.services import cli
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.settings import TeacherSettings

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from rcsd.services.engines.vllm import engine_args  # noqa: E402  (needs vllm)


@pytest.mark.parametrize("on_cpu", [False, True])
def test_flags_reach_the_engine_args(monkeypatch: pytest.MonkeyPatch, on_cpu: bool) -> None:
    served: list[ServiceSettings] = []
    monkeypatch.setattr(cli, "serve", lambda settings, service: served.append(settings))
    cli.main(
        ["serve", "teacher", "--model", "m", "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2"]
    )

    args = engine_args(served[0].engine_config(), on_cpu=on_cpu, served="m")
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (4, 2)


@pytest.mark.parametrize("settings_class", [TeacherSettings, RubricSettings])
def test_env_vars_reach_the_engine_args(
    monkeypatch: pytest.MonkeyPatch, settings_class: type[ServiceSettings]
) -> None:
    prefix = settings_class.model_config["env_prefix"]
    monkeypatch.setenv(f"{prefix}MODEL", "m")
    monkeypatch.setenv(f"{prefix}TENSOR_PARALLEL_SIZE", "8")
    monkeypatch.setenv(f"{prefix}PIPELINE_PARALLEL_SIZE", "3")
    config = settings_class().engine_config()  # type: ignore[call-arg]  (model comes from the env)

    args = engine_args(config, on_cpu=False, served="m")
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (8, 3)


def test_one_gpu_by_default() -> None:
    args = engine_args(TeacherSettings(model="m").engine_config(), on_cpu=False, served="m")
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (1, 1)


@pytest.mark.parametrize("size", ["0", "-1"])
def test_sizes_below_one_are_refused(monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    monkeypatch.setenv("RCSD_TEACHER_TENSOR_PARALLEL_SIZE", size)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        TeacherSettings(model="m")
