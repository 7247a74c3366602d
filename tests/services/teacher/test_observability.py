"""What an operator scrapes and reads: vLLM's and the process's metrics beside rcsd's, one JSON log format.

A real `rcsd serve teacher --backend vllm` process with its stdout and stderr kept apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rcsd.client import __version__
from rcsd.recipes.launch import free_port, wait_until_ok
from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env
from tests.services.teacher.payloads import group


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


def _serve(model_dir: Path, backend: str, log_dir: Path) -> Served:
    port = free_port()
    stdout, stderr = log_dir / f"{backend}.stdout", log_dir / f"{backend}.stderr"
    command = [sys.executable, "-m", "rcsd.services.cli", "serve", "teacher", "--port", str(port)]
    command += ["--backend", backend, "--model", str(model_dir), "--dtype", "float32", "--max-top-k", "8"]
    env = {**vllm_cpu_env(), **os.environ}
    env.pop("VLLM_LOGGING_CONFIG_PATH", None)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", proc, stdout, stderr)
    wait_until_ok(f"{served.url}/ready", proc, 300, lambda: stderr.read_text(errors="replace")[-5000:])
    return served


def _stop(served: Served) -> int:
    served.proc.send_signal(signal.SIGTERM)
    try:
        return served.proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(served.proc.pid, signal.SIGKILL)
        return served.proc.wait()


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def served(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory) -> Iterator[Served]:
    served = _serve(tiny_model_dir, request.param, tmp_path_factory.mktemp(f"observed-{request.param}"))
    # one scoring call, so the engine has counted something
    r = httpx.post(f"{served.url}/teacher_logprobs", json=group("none", [[5, 6, 7]]), timeout=120)
    assert r.status_code == 200, r.text
    yield served
    if served.proc.poll() is None:
        _stop(served)


def _families(served: Served) -> dict[str, object]:
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a metric family exported twice"
    return {family.name: family for family in families}


def test_metrics_carry_engine_process_and_service_info(served: Served, tiny_model_dir: Path) -> None:
    families = _families(served)
    info = httpx.get(f"{served.url}/v1/info", timeout=30).json()
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "python_info"} <= set(families)
    assert {"rcsd_requests", "rcsd_queue_depth", "rcsd_in_flight"} <= set(families)
    [sample] = families["rcsd_service_info"].samples
    assert sample.value == 1
    assert sample.labels == {
        "service": "teacher",
        "model": info["model"]["name"],
        "revision": info["model"]["revision"],
        "backend": info["backend"],
        "version": __version__,
    }
    engine = {name for name in families if name.startswith("vllm:")}
    if info["backend"] == "vllm":
        # what vLLM's production stack, KEDA templates and dashboards read
        assert {
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
        } <= engine
        assert {"vllm:e2e_request_latency_seconds", "vllm:prompt_tokens"} <= engine
        [prompt_tokens] = families["vllm:prompt_tokens"].samples[:1]
        assert prompt_tokens.value > 0  # the scoring call above went through the engine
    else:
        assert not engine


def test_every_log_line_is_json(served: Served) -> None:
    """Stopped here, so the shutdown lines (uvicorn's, vLLM's) are read too."""
    assert _stop(served) in (0, -15)
    lines = served.stderr.read_text().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in entries)
    loggers = {entry["logger"].split(".")[0] for entry in entries}
    assert {"rcsd", "uvicorn"} <= loggers, loggers
    if "vllm" in served.stderr.name:
        assert "vllm" in loggers, loggers
    assert not served.stdout.read_text().strip(), "stdout is for nothing; logs go to stderr"
