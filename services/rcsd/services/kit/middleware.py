"""The two middlewares every service runs: bearer-key auth, and a request id, metric and log per request."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from rcsd.services.kit.errors import error_response, internal_error_response
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.request_context import REQUEST_ID_HEADER, set_request_id
from rcsd.services.kit.settings import ServiceSettings

log = logging.getLogger("rcsd.app")
OPEN_PATHS = frozenset({"/health", "/ready"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

CallNext = Callable[[Request], Awaitable[Response]]


def add_authentication(app: FastAPI, settings: ServiceSettings) -> None:
    """With an API key set, every path but health and ready (and docs/metrics if opened) needs it."""
    open_paths = (
        OPEN_PATHS
        | (DOCS_PATHS if settings.open_docs else set())
        | ({"/metrics"} if settings.open_metrics else set())
    )

    @app.middleware("http")
    async def authenticate(request: Request, call_next: CallNext) -> Response:
        key = settings.api_key
        if key is not None and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {key.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(401, "unauthorized", "missing or wrong bearer API key", "authorization")
        return await call_next(request)


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
