"""Settings every service shares; each service subclasses once (one class per service).

Kubernetes service links: in a pod with `enableServiceLinks` (its default), a Service named
`rcsd-teacher` puts `RCSD_TEACHER_PORT=tcp://10.x.y.z:8001` in the environment, the very name of the
teacher's `port` setting. Such a value is ignored, with a warning, and the setting keeps its flag or
its default. Failing instead would crash-loop a pod over a variable nobody wrote, depending on
whether the Service existed when the pod was created; the value carries no intent, and a port the
operator sets (container `env`/`envFrom`) always replaces the injected one, so nothing is lost.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rcsd.services.engines.base import EngineConfig
from rcsd.services.kit.api_keys import NamedKey, collect_keys

log = logging.getLogger(__name__)

# What Kubernetes injects as <SERVICE>_PORT and <SERVICE>_PORT_<port>_<PROTO>; no setting takes it.
SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://[0-9a-fA-F.:\[\]]+:[0-9]+")


class _EnvWithoutServiceLinks(EnvSettingsSource):
    """The env vars, less the values Kubernetes' service links put under a setting's name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        value, key, is_complex = super().get_field_value(field, field_name)
        if isinstance(value, str) and SERVICE_LINK.fullmatch(value.strip()):
            name = f"{self.env_prefix}{field_name}".upper()
            log.warning(
                "ignoring %s=%s: a Kubernetes service-link variable, not a setting; %s comes from its flag "
                "or its default (set enableServiceLinks: false on the pod to drop these variables)",
                name,
                value,
                field_name,
            )
            return None, key, is_complex
        return value, key, is_complex


class ServiceSettings(BaseSettings):
    """Read from env vars (`RCSD_<SERVICE>_<FIELD>`) and CLI flags (`--field-name`)."""

    model_config = SettingsConfigDict(extra="forbid", cli_kebab_case=True, cli_implicit_flags=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvWithoutServiceLinks(settings_cls), dotenv_settings, file_secret_settings

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
    # Several trainers on one service: a key each, named (kit/api_keys.py); all keys are accepted.
    api_keys_file: Path | None = Field(default=None, description="a file of `name:key` lines, one key each")
    api_keys: SecretStr | None = Field(default=None, description="`name:key` pairs, comma-separated")
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
    graceful_shutdown_s: float = Field(
        default=10,
        gt=0,  # uvicorn reads 0 as "wait for ever"
        description="on SIGTERM: how long requests in flight may finish before they are cancelled",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="stderr lines of rcsd, uvicorn and vLLM alike: JSON, or text for a terminal",
    )

    def named_keys(self) -> list[NamedKey]:
        """Every key this service accepts, with its name (empty: the service is open)."""
        single = self.api_key.get_secret_value() if self.api_key else None
        listed = self.api_keys.get_secret_value() if self.api_keys else None
        return collect_keys(single, self.api_keys_file, listed)

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
