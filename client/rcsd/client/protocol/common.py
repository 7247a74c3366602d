"""Schemas both services share: errors, service info, the rubric criterion.

API evolution: requests are strict (`WireModel`: an unknown field is a 422, so a typo fails loudly)
and responses lenient (`ResponseModel`: unknown fields are ignored), so a server that adds a field
to an answer never breaks a client deployed before it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rcsd.client.protocol.limits import MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS

MAX_DESCRIPTION_WORDS = 40
MIN_WEIGHT = -1
MAX_WEIGHT = 10


class WireModel(BaseModel):
    """Base of every request schema (and of what travels both ways): unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class ResponseModel(BaseModel):
    """Base of every response schema: unknown fields are ignored, so servers may add fields."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)


def known_fields_only(model: type[BaseModel], items: Any) -> Any:
    """`items` (a list of dicts for a strict `model`) without the keys `model` does not know.

    For a strict model (`Criterion`) nested in a response: the response stays lenient about it.
    """
    if not isinstance(items, list):
        return items
    known = model.model_fields.keys()
    return [
        {k: v for k, v in item.items() if k in known} if isinstance(item, dict) else item for item in items
    ]


class Criterion(WireModel):
    """One weighted rubric criterion (7-10 essential, 3-6 important, 1-2 optional, -1 pitfall)."""

    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    description: str = Field(min_length=1, max_length=MAX_DESCRIPTION_CHARS)
    weight: int = Field(ge=MIN_WEIGHT, le=MAX_WEIGHT)


class ErrorDetail(ResponseModel):
    """OpenAI's error object (`message`, `type`, `param`, `code`) plus `field` and `request_id`.

    `param` is the request field at fault (the same as `field`, under OpenAI's name); `code` a
    stable machine-readable reason (e.g. `invalid_api_key`, `queue_full`, `context_too_long`).
    """

    type: str
    message: str
    field: str | None = None
    request_id: str | None = None
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    """The one error body every endpoint returns for a non-2xx answer."""

    error: ErrorDetail


class ModelInfo(ResponseModel):
    name: str
    revision: str
    tokenizer_hash: str
    vocab_size: int
    max_model_len: int
    dtype: str


class ServiceInfo(ResponseModel):
    """`GET /v1/info`: what the service serves and the limits a request must fit."""

    service: Literal["teacher", "rubric"]
    version: str | None = Field(default=None, description="the server's rcsd version (None: before 0.1.0)")
    backend: Literal["hf", "vllm"]
    model: ModelInfo
    template_version: str
    # teacher: the template version each context_mode renders with (the one its answers carry)
    templates: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, int]


class VersionInfo(ResponseModel):
    """`GET /version`: the server's rcsd version (as vLLM's `/version`)."""

    version: str


class Health(ResponseModel):
    # unavailable: the engine died; failed: the engine never loaded (the process exits)
    status: Literal["ok", "loading", "unavailable", "failed"]
