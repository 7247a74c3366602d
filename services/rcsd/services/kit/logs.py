"""One log format for the whole process: rcsd's own loggers, uvicorn's and vLLM's.

JSON lines (the default) carry the request id; `text` is for a person at a terminal. Everything goes
to stderr through one handler on the root logger. vLLM configures its loggers itself when imported,
in this process and in the engine processes it starts; `VLLM_LOGGING_CONFIG_PATH` hands it a config
that uses this module's formatter instead, so its lines (the engine core's included) match ours.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Literal

from rcsd.services.kit.request_context import current_request_id

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's, and the engines' neighbours that log on their own; all reach the root handler
_PROPAGATING = ("rcsd", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "py.warnings")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": current_request_id(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: LogFormat = "json") -> None:
    """Call before uvicorn starts (with `log_config=None`) and before vLLM is imported."""
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries say only what matters
    for name in _PROPAGATING:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("rcsd").setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn(...) as log lines, not bare text
    if log_format == "json" or not sys.stderr.isatty():
        # progress bars (weights loading: transformers, vLLM) are carriage returns, not lines
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if log_format == "json":
        _wrap_stray_stderr_lines()
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:  # an operator's own config wins
        os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = _vllm_logging_config(level, log_format)


def _wrap_stray_stderr_lines() -> None:
    """Lines written to stderr past logging (C++ warnings, the engine processes' Python warnings and
    torch's own log handlers) arrive as `{"logger": "stderr"}` entries; JSON lines pass unchanged.

    File descriptor 2 becomes a pipe that a thread reads; child processes inherit it, so what the
    engine processes write goes through the same reader.
    """
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with open(read_end, "rb") as pipe, open(original, "wb", buffering=0) as out:
            for raw in pipe:
                for part in raw.replace(b"\r", b"\n").splitlines():
                    line = part.decode(errors="replace").rstrip()
                    if not line:
                        continue
                    if not _is_json(line):
                        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "level": "warning"}
                        line = json.dumps({**entry, "logger": "stderr", "msg": line, "request_id": None})
                    out.write(line.encode() + b"\n")

    thread = threading.Thread(target=pump, name="stderr-lines", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # this process's write end closed; children may hold theirs a while
        thread.join(timeout=2)

    global _drain
    _drain = drain
    atexit.register(drain_stderr)


_drain: Callable[[], None] | None = None  # set while fd 2 is the pipe `_wrap_stray_stderr_lines` reads


def drain_stderr() -> None:
    """Forward what is still in the stderr pipe and write straight to stderr from now on. At exit, and
    before uvicorn re-raises SIGTERM (which ends the process at once, atexit handlers unrun), so the
    last lines (uvicorn's "Application shutdown complete.") are not lost."""
    global _drain
    drain, _drain = _drain, None
    if drain is not None:
        drain()


def _is_json(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _vllm_logging_config(level: str, log_format: LogFormat) -> str:
    """A `logging.config.dictConfig` file for vLLM's loggers, in every process it starts."""
    shape = (
        {"()": f"{__name__}.JsonFormatter"}
        if log_format == "json"
        else {"format": TEXT_FORMAT, "class": "logging.Formatter"}
    )
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"rcsd": shape},
        "handlers": {
            "rcsd": {"class": "logging.StreamHandler", "formatter": "rcsd", "stream": "ext://sys.stderr"}
        },
        "loggers": {"vllm": {"handlers": ["rcsd"], "level": level.upper(), "propagate": False}},
    }
    # one file per content, written whole then renamed: processes starting together share it
    text = json.dumps(config, sort_keys=True)
    path = os.path.join(
        tempfile.gettempdir(), f"rcsd-vllm-logging-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    )
    if not os.path.exists(path):
        fd, scratch = tempfile.mkstemp(prefix=".rcsd-vllm-logging-", suffix=".json")
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(scratch, path)
    return path
