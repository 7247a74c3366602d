"""Schemas both services share: errors, service info, the rubric criterion."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rcsd.client.protocol.limits import MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS

MAX_DESCRIPTION_WORDS = 40
MIN_WEIGHT = -1
MAX_WEIGHT = 10


class WireModel(BaseModel):
    """Base for every wire schema: unknown fields are refused, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class Criterion(WireModel):
    """One weighted rubric criterion (7-10 essential, 3-6 important, 1-2 optional, -1 pitfall)."""

    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    description: str = Field(min_length=1, max_length=MAX_DESCRIPTION_CHARS)
    weight: int = Field(ge=MIN_WEIGHT, le=MAX_WEIGHT)


class ErrorDetail(WireModel):
    type: str
    message: str
    field: str | None = None
    request_id: str | None = None


class ErrorResponse(WireModel):
    """The one error body every endpoint returns for a non-2xx answer."""

    error: ErrorDetail


class ModelInfo(WireModel):
    name: str
    revision: str
    tokenizer_hash: str
    vocab_size: int
    max_model_len: int
    dtype: str


class ServiceInfo(WireModel):
    """`GET /v1/info`: what the service serves and the limits a request must fit."""

    service: Literal["teacher", "rubric"]
    backend: Literal["hf", "vllm"]
    model: ModelInfo
    template_version: str
    # teacher: the template version each context_mode renders with (the one its answers carry)
    templates: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, int]


class Health(WireModel):
    # unavailable: the engine died; failed: the engine never loaded (the process exits)
    status: Literal["ok", "loading", "unavailable", "failed"]
