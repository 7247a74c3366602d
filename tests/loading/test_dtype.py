"""What `dtype="auto"` means, decided once (rcsd.loading.dtype), and what the services then load.

Holds on every machine: with torch dispatching AVX2 kernels (`ATEN_CPU_CAPABILITY=avx2`, as on an
AVX2-only CPU), `auto` is float32; bfloat16 is chosen only where the CPU computes it natively.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rcsd.loading.dtype import choose_dtype, cpu_bf16_flags, cpu_capability, cpu_has_native_bf16
from rcsd.recipes.launch import ServiceProcess

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2"}


def _choice_in_a_fresh_process(env: dict[str, str]) -> dict[str, str]:
    code = (
        "import json; from rcsd.loading.dtype import choose_dtype, cpu_capability;"
        "c = choose_dtype('auto', 'cpu'); print(json.dumps({'dtype': c.dtype, 'reason': c.reason,"
        " 'capability': cpu_capability()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_explicit_dtypes_are_kept_and_unknown_ones_refused():
    for dtype in ("float32", "bfloat16", "float16"):
        assert choose_dtype(dtype, "cpu").dtype == dtype
        assert choose_dtype(dtype, "cuda").dtype == dtype
    with pytest.raises(ValueError, match="dtype must be one of"):
        choose_dtype("bf16", "cpu")


def test_auto_on_a_gpu_is_left_to_the_engine():
    assert choose_dtype("auto", "cuda:0").dtype == "auto"


def test_auto_on_cpu_is_bfloat16_exactly_where_it_is_native():
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert cpu_capability() in choice.reason
    if choice.dtype == "bfloat16":
        assert cpu_bf16_flags() and cpu_capability().startswith("AVX512")


def test_avx2_dispatch_means_float32_on_every_machine():
    choice = _choice_in_a_fresh_process(AVX2)
    assert choice["capability"] == "AVX2"
    assert choice["dtype"] == "float32" and "AVX2" in choice["reason"]


def test_onednn_capped_below_bf16_means_float32_on_every_machine():
    choice = _choice_in_a_fresh_process({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert choice["dtype"] == "float32"


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_services_load_and_report_the_chosen_dtype(tiny_model_dir: Path, tmp_path: Path, backend: str):
    """On an AVX2 dispatch a service asked for `auto` loads float32 (vLLM's own `auto` would pick
    bfloat16), reports it in /v1/info and logs why."""
    args = ["--backend", backend, "--model", str(tiny_model_dir), "--dtype", "auto"]
    if backend == "vllm":
        args += ["--kv-cache-gb", "1", "--max-model-len", "512"]
    service = ServiceProcess("teacher", args, tmp_path, env=AVX2).start()
    try:
        info = httpx.get(f"{service.url}/v1/info", timeout=10).json()
    finally:
        service.stop()
    assert info["model"]["dtype"] == "float32"
    logged = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(e["msg"].startswith("dtype float32: CPU AVX2") for e in logged), service.log_path.read_text()
