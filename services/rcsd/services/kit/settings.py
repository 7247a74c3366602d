"""Settings every service shares; each service subclasses once (one class per service)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rcsd.services.engines.base import EngineConfig


class ServiceSettings(BaseSettings):
    """Read from env vars (`RCSD_<SERVICE>_<FIELD>`) and CLI flags (`--field-name`)."""

    model_config = SettingsConfigDict(extra="forbid", cli_kebab_case=True, cli_implicit_flags=True)

    # where it listens
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # what it serves
    backend: Literal["hf", "vllm"] = "hf"
    model: str = Field(description="a local model folder or a Hugging Face model id")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    device: str = Field(default="auto", description="hf backend: cpu, cuda or auto")
    kv_cache_gb: float = Field(default=2.0, gt=0, description="vllm on CPU: KV cache size")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_num_seqs: int = Field(default=64, ge=1)
    # vllm: a model larger than one GPU is split over tensor x pipeline GPUs (deploy/README.md)
    tensor_parallel_size: int = Field(default=1, ge=1, description="vllm: GPUs each layer is split over")
    pipeline_parallel_size: int = Field(default=1, ge=1, description="vllm: consecutive layer groups")
    seed: int = 0
    # operations
    api_key: SecretStr | None = Field(default=None, description="require `Authorization: Bearer <key>`")
    # With an API key, only /health and /ready are open unless these open more.
    open_docs: bool = Field(default=False, description="with an API key: /docs and /openapi.json need none")
    open_metrics: bool = Field(default=False, description="with an API key: /metrics needs none")
    max_concurrency: int = Field(default=8, ge=1, description="requests worked on at once")
    max_tokens_in_flight: int = Field(
        default=1_048_576,
        ge=1,
        description="context + completion tokens of the requests worked on at once; a larger request gets 413",
    )
    max_queue: int = Field(default=64, ge=0, description="requests waiting beyond that; more get 429")
    max_body_bytes: int = Field(
        default=16 * 2**20, ge=1024, description="larger request bodies get 413 before they are parsed"
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with 429/503")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def engine_config(self, adapter: str | None = None, max_top_k: int = 0) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            revision=self.revision,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            device=self.device,
            adapter=adapter,
            max_top_k=max_top_k,
            kv_cache_gb=self.kv_cache_gb,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            seed=self.seed,
        )
