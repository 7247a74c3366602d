"""deploy/k8s/components/model-download/fetch_model.py: one pod fills the cache, the replicas wait for it.

The download itself needs the hub (the Hugging Face client is replaced by a recorder here); the wait
runs as the real script, as an init container runs it, against a cache folder the test fills.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import huggingface_hub
import pytest

from tests.deploy.k8s_render import K8S

SCRIPT = K8S / "components" / "model-download" / "fetch_model.py"


@pytest.fixture(scope="module")
def fetch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_models_are_the_services_settings(fetch: ModuleType) -> None:
    env = {
        "RCSD_TEACHER_MODEL": "Qwen/Qwen3-8B",
        "RCSD_TEACHER_REVISION": "0123abc",
        "RCSD_RUBRIC_MODEL": "Qwen/Qwen3-8B",
        "RCSD_RUBRIC_ADAPTER": "/adapters/stage1",  # a local folder, not a model to download
        "RCSD_OTHER_MODEL": "/opt/rcsd/models/SmolLM2-135M-Instruct",  # inside the image
        "HF_HOME": "/x",
    }
    assert fetch.wanted_models(env) == [("Qwen/Qwen3-8B", "0123abc"), ("Qwen/Qwen3-8B", "main")]


def test_download_skips_other_formats_then_marks_it_complete(
    fetch: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    calls: list[tuple[str, str, list[str]]] = []
    files = {
        "org/a": ["model.safetensors", "pytorch_model.bin", "config.json"],
        "org/b": ["pytorch_model.bin"],
    }

    def snapshot_download(model: str, revision: str, ignore_patterns: list[str]) -> str:
        assert not fetch.marker(model, revision).exists(), "the marker comes after the whole snapshot"
        calls.append((model, revision, ignore_patterns))
        return str(tmp_path / "snapshots" / model)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda model, revision: files[model])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    fetch.download("org/a", "main")
    fetch.download("org/b", "v1")
    (_, _, ignore_a), (_, _, ignore_b) = calls
    assert "*.bin" in ignore_a and "*.bin" not in ignore_b, "a model with only .bin weights keeps them"
    assert fetch.marker("org/a", "main").read_text().strip() == str(tmp_path / "snapshots" / "org/a")
    assert fetch.marker("org/b", "v1").is_file()
    assert sorted(p.name for p in fetch.marker("org/a", "main").parent.iterdir()) == [
        "org--a@main",
        "org--b@v1",
    ], "no partial files left"


def test_a_replica_waits_until_its_model_is_marked(fetch: ModuleType, tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path), "RCSD_TEACHER_MODEL": "org/m", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.5)
        assert proc.poll() is None, "no marker yet: still waiting"
        done = tmp_path / "rcsd-complete" / "org--m@main"
        done.parent.mkdir()
        done.write_text("/somewhere\n")
        assert proc.wait(timeout=20) == 0
        assert proc.stdout is not None and "waiting for org/m@main" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_wrong_command_prints_the_usage(fetch: ModuleType) -> None:
    assert fetch.main([]) == 2 and fetch.main(["fetch"]) == 2
