"""README.md's commands, for the tests that run them: a section's ```bash block, the reader's values
swapped for the test's (each must still be in the README, so a test cannot silently stop running what
the README shows), run with bash as a reader runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def bash_block(heading: str) -> str:
    """The one ```bash block of the README section `## heading`."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    [block] = BASH_BLOCK.findall(text[start : end if end >= 0 else None])
    return block


def substitute(command: str, swaps: Mapping[str, str]) -> str:
    """`command` with each README value in `swaps` replaced by the test's."""
    for shown, used in swaps.items():
        assert shown in command, f"the README's command no longer has {shown!r}:\n{command}"
        command = command.replace(shown, used)
    return command


def run_bash(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`command` run by bash from the repository's root, this interpreter's `python` and `rcsd` first on
    PATH (the venv a reader would have activated)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
