"""Load on one service: many concurrent clients on the tiny model; what they get back, how fast, in how much memory.

A real `rcsd serve` process (hf backend, tiny fp32 model). Phase "small": `--clients` clients each
send `--requests` small requests (teacher: one group of 4 completions of 32 tokens; rubric: one of
`--distinct` questions, generated once in a warm-up, then answered from the store). Phase "huge":
the same again while one more client sends one huge batch (`--huge`; teacher: 32 groups of 16 x 256
tokens, the default per-request token limit; rubric: 16 new questions).
Clients honour 429/503 like the rcsd client (wait Retry-After, send again), so every request
should end in a 200. Reported: every status seen and whether each 429/503 carried Retry-After,
throughput, p50/p99 latency of the small requests (to their final answer), and the service
process's resident memory when ready and at its peak (VmHWM, children included).

    .venv/bin/python bench/service_load.py --service teacher [--clients 64] [--requests 8] [--max-queue 16]

Prints a table, then one line of JSON (tests/reliability/test_load.py asserts on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from rcsd.client.protocol import (
    RubricBatchRequest,
    RubricBounds,
    RubricRequest,
    TeacherBatchRequest,
    TeacherRequest,
)
from rcsd.loading.dtype import cpu_capability
from rcsd.recipes.launch import ServiceProcess

BOUNDS = RubricBounds(min_criteria=2, max_criteria=2)  # short rubrics from a random-weight model
REFUSED = (429, 503)  # the only refusals a loaded service may answer, always with Retry-After


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    refused_without_retry_after: int = 0
    latencies_s: list[float] = field(default_factory=list)  # of answered small requests
    unanswered: int = 0  # ended in something other than a 200

    def summary(self, wall_s: float) -> dict[str, object]:
        ms = sorted(x * 1000 for x in self.latencies_s)
        return {
            "statuses": dict(sorted(self.statuses.items())),
            "refused_without_retry_after": self.refused_without_retry_after,
            "answered": len(ms),
            "unanswered": self.unanswered,
            "wall_s": round(wall_s, 2),
            "throughput_rps": round(len(ms) / wall_s, 2),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
        }


def small_body(service: str, client: int, i: int, distinct: int) -> tuple[str, dict]:
    if service == "teacher":
        ids = [[(client * 31 + i * 7 + j * 3 + t) % 900 + 1 for t in range(32)] for j in range(4)]
        request = TeacherRequest(question=f"q{client}", context_mode="none", completions=ids, top_k=8)
        return "/v1/teacher_logprobs", request.model_dump(mode="json")
    request = RubricRequest(question=f"Question {(client + i) % distinct}?", bounds=BOUNDS, max_tokens=1300)
    return "/v1/rubrics", request.model_dump(mode="json")


def huge_body(service: str, size: int) -> tuple[str, dict]:
    """Teacher: `size` groups of 16 x 256 tokens (32 is the default per-request token limit);
    rubric: `size` new questions."""
    if service == "teacher":
        group = TeacherRequest(
            question="huge",
            context_mode="none",
            completions=[[(t % 900) + 1] * 256 for t in range(16)],
            top_k=8,
        )
        batch = TeacherBatchRequest(groups=[group] * size)
        return "/v1/teacher_logprobs/batch", batch.model_dump(mode="json")
    requests = [
        RubricRequest(question=f"Huge batch question {i}?", bounds=BOUNDS, max_tokens=1300)
        for i in range(size)
    ]
    return "/v1/rubrics/batch", RubricBatchRequest(requests=requests).model_dump(mode="json")


async def send(
    http: httpx.AsyncClient, path: str, body: dict, tally: Tally, deadline_s: float
) -> float | None:
    """One request to its final answer, resent after Retry-After on 429/503; seconds taken, None if refused."""
    started = time.perf_counter()
    while True:
        response = await http.post(path, json=body)
        tally.statuses[response.status_code] += 1
        if response.status_code not in REFUSED:
            break
        retry_after = response.headers.get("retry-after")
        if retry_after is None:
            tally.refused_without_retry_after += 1
            break
        if time.perf_counter() - started > deadline_s:
            break
        await asyncio.sleep(float(retry_after))
    if response.status_code != 200:
        tally.unanswered += 1
        return None
    return time.perf_counter() - started


async def phase(url: str, args: argparse.Namespace, huge: bool) -> dict[str, object]:
    small, big = Tally(), Tally()
    limits = httpx.Limits(max_connections=args.clients + 1)

    async def client(n: int) -> None:
        for i in range(args.requests):
            path, body = small_body(args.service, n, i, args.distinct)
            if (seconds := await send(http, path, body, small, args.deadline_s)) is not None:
                small.latencies_s.append(seconds)

    async def huge_client() -> None:
        path, body = huge_body(args.service, args.huge)
        if (seconds := await send(http, path, body, big, args.deadline_s)) is not None:
            big.latencies_s.append(seconds)

    async with httpx.AsyncClient(base_url=url, timeout=args.deadline_s, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(args.clients)), *([huge_client()] if huge else []))
        wall_s = time.perf_counter() - started
    result = {"small": small.summary(wall_s)}
    if huge:
        result["huge"] = big.summary(wall_s)
    return result


async def warm_up(url: str, args: argparse.Namespace) -> None:
    """One of each small request first (rubric: each distinct question generated and stored), so both
    phases measure the same thing: small requests served beside the others, not the first generation."""
    async with httpx.AsyncClient(base_url=url, timeout=args.deadline_s) as http:
        for i in range(args.distinct if args.service == "rubric" else 1):
            path, body = small_body(args.service, 0, i, args.distinct)
            await send(http, path, body, Tally(), args.deadline_s)


def resident_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process and its children, in MiB."""
    total_kb = 0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def service_args(args: argparse.Namespace, model: Path, folder: Path) -> list[str]:
    """What the started service runs with (tests/reliability/conftest.py starts its own the same way)."""
    extra = ["--max-queue", str(args.max_queue), "--max-concurrency", str(args.max_concurrency)]
    if args.service == "teacher":
        extra += ["--max-top-k", "8"]
    else:
        extra += ["--store-url", f"sqlite:///{folder / 'rubrics.db'}"]
    return ["--backend", "hf", "--model", str(model), "--dtype", "float32", *extra]


async def measure(url: str, pid: int, args: argparse.Namespace) -> tuple[float, dict, dict, float]:
    """Memory when ready, the two phases, peak memory."""
    ready_mb = resident_mb(pid, "VmRSS")
    await warm_up(url, args)
    small = await phase(url, args, huge=False)
    mixed = await phase(url, args, huge=True)
    return ready_mb, small, mixed, resident_mb(pid, "VmHWM")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", choices=["teacher", "rubric"], required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=8, help="per client and phase")
    parser.add_argument("--distinct", type=int, default=4, help="rubric: distinct questions the clients ask")
    parser.add_argument("--huge", type=int, default=None, help="teacher groups (32) or rubric questions (16)")
    parser.add_argument("--max-queue", type=int, default=16, help="small enough that some clients get 429")
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--deadline-s", type=float, default=600, help="give up on one request after this")
    parser.add_argument("--model", type=Path, default=None, help="default: the tiny model, built here")
    parser.add_argument("--url", default=None, help="load a running service instead (with --pid)")
    parser.add_argument("--pid", type=int, default=None, help="the running service's process id")
    args = parser.parse_args()
    args.huge = args.huge or (32 if args.service == "teacher" else 16)

    if args.url is not None:
        ready_mb, small, mixed, peak_mb = await measure(args.url, args.pid, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if args.model is None:
                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the tiny model
                from tests.fixtures.tiny_model import build_tiny_model

                args.model = build_tiny_model(folder / "tiny", seed=0)
            service = ServiceProcess(args.service, service_args(args, args.model, folder), folder).start()
            try:
                assert service.proc is not None
                ready_mb, small, mixed, peak_mb = await measure(service.url, service.proc.pid, args)
            finally:
                service.stop()

    print(
        f"\n{args.service}: {args.clients} clients x {args.requests} requests, CPU {cpu_capability()}, hf backend"
    )
    print(f"{'phase':<22}{'statuses':<28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    rows = [
        ("small only", small["small"]),
        ("small beside huge", mixed["small"]),
        ("the huge one", mixed["huge"]),
    ]
    for name, row in rows:
        statuses = str(row["statuses"])
        print(f"{name:<22}{statuses:<28}{row['throughput_rps']:>8}{row['p50_ms']!s:>9}{row['p99_ms']!s:>9}")
    print(f"resident memory: {ready_mb} MiB when ready, peak {peak_mb} MiB")
    print(
        json.dumps(
            {
                "bench": "service_load",
                "service": args.service,
                "cpu_capability": cpu_capability(),
                "clients": args.clients,
                "requests_per_client": args.requests,
                "max_queue": None if args.url else args.max_queue,  # a running service's own otherwise
                "max_concurrency": None if args.url else args.max_concurrency,
                "huge_size": args.huge,
                "small_only": small["small"],
                "small_beside_huge": mixed["small"],
                "huge": mixed["huge"],
                "rss_ready_mb": ready_mb,
                "rss_peak_mb": peak_mb,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
