"""`pip install '.[trainer]'` into a clean virtualenv: a trainer machine needs no FastAPI and no vLLM.

The venv gets the CPU build of torch first (an unpinned torch would pull a CUDA build of several GB),
then the project with the trainer extra only. In it, no service dependency is importable, and
`rcsd train` runs a real step against the teacher and rubric services (started from the full venv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.trainer.configs import answer_config

REPO = Path(__file__).resolve().parents[2]
SERVICE_ONLY = ("vllm", "fastapi", "starlette", "uvicorn", "pydantic_settings", "xgrammar", "psycopg")
TORCH_CPU = "torch==2.13.0"  # the CPU build this project's machines carry


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_trainer_installs_without_the_services_and_trains(
    tiny_model_dir, trainer_services, questions_file, tmp_path
):
    source = tmp_path / "rcsd"
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", ".cache", ".*_cache", "runs", "tests", "*.egg-info", "build", "__pycache__"
    )
    shutil.copytree(REPO, source, ignore=ignore)
    venv, env = tmp_path / "venv", _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    pip = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            TORCH_CPU,
            str(source / "client"),  # rcsd-client: the project pins it, no index has it
            f"{source}[trainer]",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    check = f"import importlib.util as u; print([m for m in {SERVICE_ONLY!r} if u.find_spec(m)])"
    found = subprocess.run([python, "-c", check], capture_output=True, text=True, env=env, check=True)
    assert found.stdout.strip() == "[]", f"importable on a trainer-only machine: {found.stdout}"

    run_dir = tmp_path / "run"
    config = answer_config(tiny_model_dir, trainer_services, questions_file, run_dir, steps=1)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    train = subprocess.run(
        [str(venv / "bin" / "rcsd"), "train", str(config_file)], capture_output=True, text=True, env=env
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
