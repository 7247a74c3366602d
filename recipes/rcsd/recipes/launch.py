"""Start a service as a real child process on loopback, wait until it is ready, stop it.

Used by the demo, the benchmarks and the tests: each runs the real `rcsd serve` command.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ok(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float, describe: Callable[[], str]
) -> None:
    """Poll `url` until it answers 200; fail early, saying `describe()`, if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {describe()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s}s: {describe()}")


class ServiceProcess:
    """`rcsd serve <service> ...` as a child process; logs go to a file for failed tests."""

    ready_path = "/ready"

    def __init__(self, service: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.service = service
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{service}-{self.port}.log"
        self.env = {**vllm_cpu_env(), **os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rcsd.services.cli",
            "serve",
            self.service,
            "--port",
            str(self.port),
            *self.args,
        ]

    def start(self, timeout_s: float = 180) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        wait_until_ok(
            f"{self.url}{self.ready_path}", self.proc, timeout_s, lambda: f"{self.service}:\n{self.logs()}"
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """Hard kill (SIGKILL to the whole process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30) -> int | None:
        """Graceful stop (SIGTERM), then a hard kill if it hangs; returns the exit code."""
        stop_all([self], timeout_s)
        return None if self.proc is None else self.proc.returncode


class StockVLLMProcess(ServiceProcess):
    """vLLM's own OpenAI server, unmodified (`vllm serve MODEL`, `args` its flags): a stock teacher."""

    ready_path = "/health"

    def __init__(self, model: Path, args: list[str], log_dir: Path, cpu_kv_cache_gib: int = 2) -> None:
        """`cpu_kv_cache_gib`: vllm-cpu's KV cache (2: as rcsd's engine; less for a tiny model)."""
        super().__init__("vllm-openai", args, log_dir, env={"VLLM_CPU_KVCACHE_SPACE": str(cpu_kv_cache_gib)})
        self.model = model

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",  # what `vllm serve` runs (vllm-cpu's CLI cannot
            "--model",  # find its version: its distribution is named vllm-cpu)
            str(self.model),
            "--port",
            str(self.port),
            *self.args,
        ]


def stop_all(processes: Iterable[ServiceProcess], timeout_s: float = 30) -> None:
    """SIGTERM every running one at once, then wait within one shared deadline; SIGKILL what is left.

    One signal each: a second SIGTERM would make uvicorn skip its graceful shutdown.
    """
    running = [p for p in processes if p.proc is not None and p.proc.poll() is None]
    for process in running:
        assert process.proc is not None
        process.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in running:
        assert process.proc is not None
        try:
            process.proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
