"""Picks and loads an engine by backend name; heavy imports happen only here."""

from __future__ import annotations

from typing import Literal

from rcsd.services.engines.base import Engine, EngineConfig


async def load_engine(backend: Literal["hf", "vllm"], config: EngineConfig) -> Engine:
    if backend == "vllm":
        from rcsd.services.engines.vllm import VllmEngine

        return await VllmEngine.load(config)
    from rcsd.services.engines.hf import HfEngine

    return await HfEngine.load(config)
