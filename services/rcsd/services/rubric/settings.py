"""The rubric service's settings: one class, env vars `RCSD_RUBRIC_*` or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from rcsd.services.kit.settings import ServiceSettings


def _default_store_url() -> str:
    return f"sqlite:///{Path.home() / '.cache' / 'rcsd' / 'rubrics.db'}"


class RubricSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RCSD_RUBRIC_")

    port: int = Field(default=8002, ge=0, le=65535)
    adapter: str | None = Field(default=None, description="a LoRA adapter folder (a Stage I generator)")
    store_url: str = Field(
        default_factory=_default_store_url,
        description="sqlite:///path.db (one host) or postgresql://... (replicas on several hosts)",
    )
    template_version: str = "v2"
    max_attempts: int = Field(default=4, ge=1, description="generations tried before a request fails")
    max_batch: int = Field(default=64, ge=1)
    lock_timeout_s: float = Field(default=600, gt=0, description="wait for another replica's generation")
