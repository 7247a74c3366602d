"""Load on each service (bench/service_load.py as it is run by hand): many concurrent clients, then the
same beside one huge batch. Every request ends in a 200; the only refusals are 429/503, each with
Retry-After; the huge batch is answered too; resident memory stays bounded.
`make test` runs 16 clients x 2 requests per phase beside a small "huge" batch; `make reliability`
64 clients x 8 beside the full one (32 teacher groups of 16 x 256 tokens; 16 new rubrics).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "service_load.py"
PEAK_GROWTH_MB = 1024  # the tiny model's service holds ~0.4 GiB when ready


@pytest.mark.parametrize("service", ["teacher", "rubric"])
def test_short_load(service, request):
    """On the package's running service (max_queue 4: 16 clients meet 429s), a small "huge" batch."""
    server = request.getfixturevalue(f"{service}_server")
    args = [
        "--clients",
        "16",
        "--requests",
        "2",
        "--huge",
        "4",
        "--url",
        server.url,
        "--pid",
        str(server.proc.pid),
    ]
    check_load(service, args)


@pytest.mark.reliability
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("service", ["teacher", "rubric"])
def test_64_clients(service, tiny_model_dir):
    """A service of its own with the script's settings (max_queue 16)."""
    check_load(service, ["--clients", "64", "--requests", "8", "--model", str(tiny_model_dir)])


def check_load(service: str, args: list[str]) -> None:
    command = [sys.executable, str(SCRIPT), "--service", service, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    clients, requests = result["clients"], result["requests_per_client"]
    if service == "teacher":  # stored rubrics are answered without waiting for a slot: no 429 there
        assert result["small_only"]["statuses"].get("429"), "no client was refused: the test shows nothing"
    for phase in ("small_only", "small_beside_huge", "huge"):
        figures = result[phase]
        assert set(figures["statuses"]) <= {"200", "429", "503"}, (phase, figures)
        assert figures["refused_without_retry_after"] == 0 and figures["unanswered"] == 0, (phase, figures)
    assert result["small_only"]["answered"] == result["small_beside_huge"]["answered"] == clients * requests
    assert result["huge"]["answered"] == 1
    assert result["rss_peak_mb"] - result["rss_ready_mb"] < PEAK_GROWTH_MB, result
