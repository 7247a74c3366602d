"""The teacher service's settings: one class, env vars `RCSD_TEACHER_*` or CLI flags."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from rcsd.services.kit.settings import ServiceSettings


class TeacherSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RCSD_TEACHER_")

    port: int = Field(default=8001, ge=0, le=65535)
    template_version: str = Field(
        default="release",
        description="default teacher_context/student_prompt templates: release (the released RCSD texts) or v1",
    )
    rubric_template_version: str = Field(
        default="v2",
        description="the rubric writer's prompt the rubric_writer modes repeat (rubric service's)",
    )
    max_top_k: int = Field(default=64, ge=0, le=1024)
    max_completions_per_group: int = Field(default=64, ge=1)
    max_groups_per_batch: int = Field(default=64, ge=1)
    max_completion_tokens_per_request: int = Field(default=131_072, ge=1)
    rationale_max_tokens: int = Field(default=512, ge=1, description="length of an `auto` rationale")
    rationale_cache_size: int = Field(default=10_000, ge=0)
