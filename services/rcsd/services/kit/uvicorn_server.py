"""uvicorn's server, with the process's last log lines out before it re-raises the stop signal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from rcsd.services.kit.logs import drain_stderr


class DrainingServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM once it has shut down, which ends the process before atexit handlers
    run: the stderr pipe (`rcsd.services.kit.logs`) is drained first, or the shutdown's lines are lost."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            drain_stderr()
