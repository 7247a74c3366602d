"""The two middlewares every service runs: bearer-key auth, and a request id, metric and log per request.

Auth accepts any of the service's named keys (kit/api_keys.py) and puts the key's name in the
request's context: admission shares capacity by it, metrics count by it (`key_name`, never the key).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from rcsd.services.kit.api_keys import ANONYMOUS
from rcsd.services.kit.errors import error_response, internal_error_response
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.request_context import REQUEST_ID_HEADER, set_key_name, set_request_id
from rcsd.services.kit.settings import ServiceSettings

log = logging.getLogger("rcsd.app")
OPEN_PATHS = frozenset({"/health", "/ready", "/version"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

CallNext = Callable[[Request], Awaitable[Response]]


def add_authentication(
    app: FastAPI, settings: ServiceSettings, metrics: ServiceMetrics | None = None
) -> None:
    """With API keys set, every path but health, ready and version (and docs/metrics if opened) needs one."""
    open_paths = (
        OPEN_PATHS
        | (DOCS_PATHS if settings.open_docs else set())
        | ({"/metrics"} if settings.open_metrics else set())
    )

    keys = [(key.name, f"Bearer {key.secret}".encode()) for key in settings.named_keys()]

    @app.middleware("http")
    async def authenticate(request: Request, call_next: CallNext) -> Response:
        if request.url.path in open_paths:
            set_key_name(None)
            return await call_next(request)
        name = ANONYMOUS if not keys else _key_name(request.headers.get("authorization", "").encode(), keys)
        if name is None:
            return error_response(
                401,
                "unauthorized",
                "missing or wrong bearer API key",
                "authorization",
                code="invalid_api_key",
            )
        set_key_name(name)
        response = await call_next(request)
        if metrics is not None:
            metrics.key_requests(key_name=name, status=str(response.status_code)).inc()
        return response


def _key_name(given: bytes, keys: list[tuple[str, bytes]]) -> str | None:
    """The name of the key `given` is, comparing against every key in constant time (no early exit)."""
    found = None
    for name, expected in keys:
        if hmac.compare_digest(given, expected):
            found = name
    return found


def add_observation(app: FastAPI, metrics: ServiceMetrics) -> None:
    """A request id (the caller's or a new one) on every answer, its count and latency, one log line."""

    @app.middleware("http")
    async def observe(request: Request, call_next: CallNext) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        set_request_id(request_id)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # our bug: still a request with an id, a metric and a log line
            response = internal_error_response(exc)
        elapsed = time.perf_counter() - started
        route = _route_label(request)
        metrics.requests(route=route, status=str(response.status_code)).inc()
        metrics.latency(route=route).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = request_id
        log.info(
            "request",
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "ms": round(elapsed * 1000, 1),
                }
            },
        )
        return response


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")
