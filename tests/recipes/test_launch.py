"""`stop_all`: every child gets one SIGTERM at once, the graceful ones exit on their own, a child that
ignores SIGTERM is killed at the shared deadline."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from rcsd.recipes.launch import ServiceProcess, stop_all

# Prints "ready", then on SIGTERM writes it down (with whether the process `watch`, if given, was
# still running then) and exits 0 (graceful), or ignores it.
CHILD = """
import os, signal, sys, time
path, graceful, watch = sys.argv[1], sys.argv[2] == "graceful", sys.argv[3:]
def on_term(signum, frame):
    note = ""
    if watch:
        try:
            os.kill(int(watch[0]), 0)
            note = " alive"
        except ProcessLookupError:
            note = " gone"
    with open(path, "a") as f:
        f.write(f"TERM{note}\\n")
    if graceful:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def _child(tmp_path: Path, name: str, mode: str, watch: int | None = None) -> tuple[ServiceProcess, Path]:
    process, seen = ServiceProcess(name, [], tmp_path), tmp_path / f"{name}.terms"
    process.proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(seen), mode, *([] if watch is None else [str(watch)])],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.proc.stdout is not None and process.proc.stdout.readline() == b"ready\n"
    return process, seen


def test_stop_all_signals_once_and_kills_what_hangs(tmp_path: Path) -> None:
    stubborn, stubborn_seen = _child(tmp_path, "stubborn", "ignore")
    assert stubborn.proc is not None
    graceful, graceful_seen = _child(tmp_path, "graceful", "graceful", watch=stubborn.proc.pid)
    stop_all([stubborn, graceful], timeout_s=2)
    assert graceful.proc is not None and graceful.proc.returncode == 0
    assert stubborn.proc is not None and stubborn.proc.returncode == -signal.SIGKILL
    # One SIGTERM each (a second would make uvicorn skip its graceful shutdown), and the graceful one
    # got its own while the stubborn one was still running: signalled at once, not one after the other.
    assert graceful_seen.read_text() == "TERM alive\n"
    assert stubborn_seen.read_text() == "TERM\n"


def test_stop_all_skips_what_never_started_or_already_exited(tmp_path: Path) -> None:
    never = ServiceProcess("never", [], tmp_path)
    done, _ = _child(tmp_path, "done", "graceful")
    assert done.proc is not None
    done.proc.send_signal(signal.SIGTERM)
    done.proc.wait(10)
    stop_all([never, done], timeout_s=30)
    assert never.stop() is None and done.stop() == 0
