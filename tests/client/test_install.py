"""`pip install ./client` into a clean virtualenv: it works alone and pulls in no heavy dependency."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"

CHECK = textwrap.dedent(
    """
    import importlib.util, json
    import numpy as np
    import rcsd.client as rc
    from rcsd.client import codec

    heavy = [m for m in ("torch", "vllm", "transformers", "fastapi", "rcsd.services", "rcsd.trainer")
             if importlib.util.find_spec(m) is not None]
    assert not heavy, f"importable in the client-only venv: {heavy}"

    response = rc.TeacherResponse(
        completions=[rc.CompletionScores(token_ids=[1, 2], logprobs=[-0.5, -1.5],
                                         topk_ids=[[1, 3], [2, 4]], topk_logprobs=[[-0.5, -2.0], [-1.5, -3.0]])],
        context_length=7, model="m", model_revision="r", tokenizer_hash="h", backend="hf", template_version="v1")
    for again in (codec.decode(codec.encode(response), rc.TeacherResponse),
                  rc.TeacherResponse.model_validate_json(response.model_dump_json())):
        assert again.completions[0].topk_ids.dtype == np.int32
        np.testing.assert_array_equal(again.completions[0].topk_logprobs, response.completions[0].topk_logprobs)
    try:
        rc.to_padded_tensors([response])
    except ImportError as exc:
        assert "needs torch" in str(exc)
    else:
        raise AssertionError("to_padded_tensors worked without torch")
    rc.TeacherClient("http://127.0.0.1:9").close()
    print(json.dumps({"version": rc.__version__, "file": rc.__file__}))
    """
)


def test_client_installs_alone_in_a_clean_venv(tmp_path):
    # A copy, so the build leaves nothing behind in the repository.
    source = tmp_path / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PYTHONNOUSERSITE"] = "1"

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    pip = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(source)], capture_output=True, text=True, env=env
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    install_s = time.monotonic() - started

    check = subprocess.run([python, "-c", CHECK], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert str(venv) in check.stdout
    print(f"clean venv + pip install ./client: {install_s:.1f}s")
