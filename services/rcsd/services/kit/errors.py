"""One error format for every endpoint, produced by registered handlers.

Anything a client sent wrong becomes a 4xx naming the field; only our own bugs are 5xx. The body
is OpenAI's error object (`message`, `type`, `param`, `code`) with our `field` and `request_id`:
`param` is `field` under OpenAI's name, `code` a stable reason (the error type unless more is known:
pydantic's error type for a 422, `invalid_api_key` for a 401).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rcsd.client.protocol import ErrorDetail, ErrorResponse
from rcsd.services.engines.base import EngineUnavailable
from rcsd.services.kit.request_context import current_request_id

log = logging.getLogger("rcsd.errors")


class ServiceError(Exception):
    """An error with an HTTP status, raised by service logic; `field` names what to fix, `code` why."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request",
        field: str | None = None,
        retry_after_s: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.type = type
        self.field = field
        self.retry_after_s = retry_after_s


def invalid(field: str, message: str) -> ServiceError:
    """A 422 for a request field that breaks a limit."""
    return ServiceError(422, f"{field}: {message}", type="invalid_request", field=field)


# What each error status means on these services; the routes declare them in their OpenAPI
# (`responses=error_responses(...)`), so the spec names every status a client can really get.
ERROR_MEANINGS = {
    400: "the body could not be read (not UTF-8 JSON)",
    401: "missing or wrong bearer API key",
    404: "no such resource",
    413: "the body is over max_body_bytes, or the request needs more tokens than max_tokens_in_flight",
    422: "a field breaks the schema or a limit; `error.field` names it",
    429: "admission queue full: retry after Retry-After seconds, or on another replica",
    503: "engine loading, failed or dead, or a generation lock held elsewhere (Retry-After when waiting helps)",
    507: "the rubric store's disk is full",
}
SERVICE_ERRORS = (400, 401, 413, 422, 429, 503)  # what a route taking a body and doing work can answer
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these statuses (default `SERVICE_ERRORS`), all in the one error format."""
    return {
        code: {
            "model": ErrorResponse,
            "description": ERROR_MEANINGS[code],
            **({"headers": _RETRY_AFTER} if code in (429, 503) else {}),
        }
        for code in codes or SERVICE_ERRORS
    }


def error_response(
    status: int,
    type_: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> JSONResponse:
    detail = ErrorDetail(
        type=type_,
        message=message,
        field=field,
        request_id=current_request_id(),
        param=field,
        code=code or type_,
    )
    body = ErrorResponse(error=detail)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return error_response(exc.status, exc.type, exc.message, exc.field, headers, exc.code)

    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(_: Request, exc: EngineUnavailable) -> JSONResponse:
        log.error("engine unavailable: %s", exc)
        return error_response(503, "unavailable", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _location(tuple(first.get("loc", ())))
        messages = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:5]]
        code = str(first.get("type") or "invalid_request")
        return error_response(422, "invalid_request", "; ".join(messages), field, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)


def internal_error_response(exc: Exception) -> JSONResponse:
    """A 500 for our own bug. Called inside the request-id/metrics middleware (not registered as a
    handler: Starlette runs an `Exception` handler outside every middleware), so a 500 carries
    X-Request-ID, is counted and is logged as a request like any other answer."""
    log.error("internal error", exc_info=exc)
    return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")
