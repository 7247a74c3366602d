"""The demo's two services as real child processes: the shared launcher, plus what a newcomer needs.

`rcsd.recipes.launch.ServiceProcess` runs `python -m rcsd.services.cli serve <service> ...` on a free
loopback port with its log in a file (the vLLM-CPU env settings included) and stops it with SIGTERM.
The demo adds: where to look when a service does not come up (an engine that fails to load makes
`rcsd serve` exit non-zero at once), and how each service ended, in words.
"""

from __future__ import annotations

import signal
from pathlib import Path

from rcsd.recipes.launch import ServiceProcess, wait_until_ok


class DemoService(ServiceProcess):
    def __init__(self, service: str, backend: str, args: list[str], log_dir: Path) -> None:
        super().__init__(service, ["--backend", backend, *args], log_dir)
        self.backend = backend

    def wait_ready(self, timeout_s: float) -> None:
        """Until `/ready` answers 200; a failed engine load exits the process, reported at once."""
        assert self.proc is not None
        wait_until_ok(
            f"{self.url}/ready", self.proc, timeout_s, lambda: f"{self.service}; {self._log_hint()}"
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
