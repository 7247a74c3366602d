"""Every curl example in README.md works against live services: a README example that breaks fails here.

The fenced ```bash blocks that call curl are run as they are written, with bash, against a real
teacher and a real rubric service (`rcsd serve`, hf backend, the tiny model) started with an API key:
`TEACHER_URL`, `RUBRIC_URL` and `RCSD_API_KEY` are set as the README tells a reader to set them. Each
example uses `curl -fsS`, so an HTTP error fails its block; each must print one JSON document, or
Prometheus text for `/metrics`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rcsd.recipes.launch import ServiceProcess
from tests.docs.readme import BASH_BLOCK, README

URL_PATH = re.compile(r"\$(TEACHER|RUBRIC)_URL(/[\w/$.{}-]*)")
API_KEY = "readme-example-key"
ENDPOINTS = {  # every endpoint of both services has an example
    "TEACHER": {"/health", "/version", "/v1/info", "/v1/teacher_logprobs", "/v1/teacher_logprobs/batch"},
    "RUBRIC": {"/ready", "/metrics", "/v1/rubrics", "/v1/rubrics/batch", "/v1/rubrics/$RUBRIC_ID"},
}


def curl_examples() -> list[str]:
    return [block for block in BASH_BLOCK.findall(README.read_text()) if "curl " in block]


def _name(block: str) -> str:
    """The service and path the example ends with (the one whose answer it prints)."""
    service, path = URL_PATH.findall(block)[-1]
    return f"{service.lower()}{path}"


@pytest.fixture(scope="module")
def live_env(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    log_dir = tmp_path_factory.mktemp("readme-services")
    common = ["--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32", "--api-key", API_KEY]
    teacher = ServiceProcess("teacher", common, log_dir)
    rubric = ServiceProcess(
        "rubric", [*common, "--store-url", f"sqlite:///{log_dir / 'rubrics.db'}"], log_dir
    )
    try:
        with ThreadPoolExecutor(2) as pool:  # both load at once
            list(pool.map(lambda service: service.start(), (teacher, rubric)))
        yield {**os.environ, "TEACHER_URL": teacher.url, "RUBRIC_URL": rubric.url, "RCSD_API_KEY": API_KEY}
    finally:
        teacher.stop()
        rubric.stop()


def test_every_endpoint_has_an_example_that_fails_on_http_errors() -> None:
    examples = curl_examples()
    shown = {(service, path) for block in examples for service, path in URL_PATH.findall(block)}
    for service, paths in ENDPOINTS.items():
        assert {(service, path) for path in paths} <= shown
    for block in examples:
        assert block.count("curl ") == block.count("curl -fsS"), block


@pytest.mark.parametrize("block", curl_examples(), ids=_name)
def test_curl_example(block: str, live_env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], env=live_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{block}\nexit {done.returncode}: {done.stderr}"
    if _name(block).endswith("/metrics"):
        assert "# TYPE rcsd_requests" in done.stdout
    else:
        json.loads(done.stdout)  # one JSON document, nothing else
