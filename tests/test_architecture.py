"""The house plan holds: import-linter's contracts (pyproject.toml) pass on the tree, and catch a break.

Each break is one import appended to a copy of the part folders; the contracts must name it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("client", "loading", "services", "trainer", "recipes")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / part) for part in PARTS)}
    return subprocess.run([str(LINT_IMPORTS)], cwd=root, env=env, capture_output=True, text=True)


def test_the_tree_keeps_every_contract() -> None:
    check = _lint(ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "BROKEN" not in check.stdout and "Contracts: 2 kept, 0 broken" in check.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("services/rcsd/services/kit/errors.py", "import rcsd.trainer.losses", "rcsd.trainer.losses"),
        ("trainer/rcsd/trainer/losses.py", "import rcsd.services.kit.errors", "rcsd.services.kit.errors"),
        ("trainer/rcsd/trainer/losses.py", "import rcsd.recipes.evaluate", "rcsd.recipes.evaluate"),
        ("client/rcsd/client/codec.py", "import rcsd.loading.dtype", "rcsd.loading.dtype"),
        ("client/rcsd/client/codec.py", "import torch", "torch"),
        ("client/rcsd/client/codec.py", "import fastapi", "fastapi"),
        ("client/rcsd/client/codec.py", "import vllm", "vllm"),
    ],
)
def test_a_crossing_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    for part in PARTS:
        shutil.copytree(ROOT / part / "rcsd", tmp_path / part / "rcsd")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{line}  # noqa\n")
    check = _lint(tmp_path)
    assert check.returncode != 0 and "BROKEN" in check.stdout, check.stdout
    assert f"-> {broken}" in check.stdout or f"import {broken}" in check.stdout, check.stdout
