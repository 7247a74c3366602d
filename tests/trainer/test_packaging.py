"""A trainer machine needs no vLLM and no FastAPI: the `trainer` extra and what `rcsd train` imports.

The import check runs in a fresh interpreter and traces `sys.modules`: `rcsd train --help` through
the `rcsd` entry point, then the whole training loop, must import none of the services' packages.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ONLY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic_settings",
    "prometheus_client",
    "vllm",
    "psycopg",
)

CHECK = textwrap.dedent(
    """
    import contextlib, io, sys
    from rcsd.recipes.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["train", "--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    assert "rcsd train" in out.getvalue() and "--resume" in out.getvalue()
    import rcsd.trainer.train  # the whole loop, with torch, transformers and peft

    service_only = {service_only!r}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in service_only)
    services = sorted(m for m in sys.modules if m.startswith("rcsd.services"))
    assert not loaded and not services, (loaded, services)
    """
)


def test_rcsd_train_imports_nothing_of_the_services() -> None:
    code = CHECK.format(service_only=SERVICE_ONLY)
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_trainer_extra_leaves_out_the_services() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in extras["trainer"] + client["dependencies"]}
    assert {"torch", "transformers", "peft", "pyyaml", "safetensors"} <= names
    assert not names & {"fastapi", "uvicorn", "pydantic-settings", "vllm", "xgrammar", "psycopg"}
    assert {"fastapi", "uvicorn", "pydantic-settings"} <= {_name(r) for r in extras["services"]}
    # make test installs TRL at the version the `trl` extra names, so tests/client/test_trl.py runs there
    assert '".[services,trainer,dev,trl]"' in (ROOT / "deploy" / "install.sh").read_text()
    assert extras["trl"][0].startswith("trl==")


def test_one_distribution_owns_the_client_and_the_engine_is_an_extra() -> None:
    """`rcsd` depends on `rcsd-client` at its own version instead of packaging client/ too; the GPU
    engine is the `vllm` extra, at the version deploy/install.sh installs."""
    setup_py = (ROOT / "setup.py").read_text()
    assert 'install_requires = [f"rcsd-client=={version}"]' in setup_py
    assert '"client"' not in re.search(r"for root in \(([^)]*)\)", setup_py).group(1)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    engine = re.search(r"^VLLM_VERSION=(\S+)", (ROOT / "deploy" / "install.sh").read_text(), re.M).group(1)
    assert extras["vllm"] == [f"vllm=={engine}"]
    assert [_name(r) for r in extras["tensorboard"] + extras["wandb"]] == ["tensorboard", "wandb"]
    transformers = [r for extra in extras.values() for r in extra if _name(r) == "transformers"]
    assert transformers and all(r == "transformers>=4.56" for r in transformers)


def _name(requirement: str) -> str:
    for separator in "[<>=! ":
        requirement = requirement.split(separator)[0]
    return requirement.lower()
