"""The demo's two services as real child processes: the shared launcher, plus what a newcomer needs.

`rcsd.services.launch.ServiceProcess` runs `python -m rcsd.services.cli serve <service> ...` on a free
loopback port with its log in a file (the vLLM-CPU env settings included) and stops it with SIGTERM.
The demo adds: an engine that fails to load is reported at once (its `/ready` would say 503 until the
timeout), and how each service ended, in words.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from rcsd.services.launch import ServiceProcess

READY_POLL_S = 0.25


class DemoService(ServiceProcess):
    def __init__(self, service: str, backend: str, args: list[str], log_dir: Path) -> None:
        super().__init__(service, ["--backend", backend, *args], log_dir)
        self.backend = backend

    def wait_ready(self, timeout_s: float) -> None:
        """Until `/ready` answers 200; raises with the log's tail if it exits, fails to load or hangs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the {self.service} service exited ({self.proc.returncode}); {self._log_hint()}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
                # /ready says 503 both while loading and after a failed load; /v1/info tells them apart
                if "failed to load" in httpx.get(f"{self.url}/v1/info", timeout=2).text:
                    raise RuntimeError(f"the {self.service} engine failed to load; {self._log_hint()}")
            except httpx.HTTPError:
                pass
            time.sleep(READY_POLL_S)
        raise TimeoutError(
            f"the {self.service} service was not ready after {timeout_s:.0f} s; {self._log_hint()}"
        )

    def _log_hint(self) -> str:
        tail = "\n".join(self.logs().splitlines()[-15:])
        other = "hf" if self.backend == "vllm" else "vllm"
        return f"see {self.log_path} (or try --backend {other}). Its last lines:\n{tail}"

    def exit_status(self) -> str:
        """How it ended; uvicorn re-raises SIGTERM after a clean shutdown, so that reads as exit -15."""
        code = None if self.proc is None else self.proc.poll()
        if self.proc is None:
            return "not started"
        if code is None:
            return "still running"
        if code in (0, -signal.SIGTERM):
            return f"stopped cleanly on SIGTERM (exit {code})"
        if code == -signal.SIGKILL:
            return "killed (SIGKILL: it did not exit after SIGTERM)"
        return f"exited with {code}"
