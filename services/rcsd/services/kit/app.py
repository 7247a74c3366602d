"""The app shell both services share: lifespan, health/ready/info/metrics, auth, request ids.

A service supplies a loader (builds its engine and logic, off the request path) and
its routers; nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, Protocol, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rcsd.client import __version__
from rcsd.client.protocol import Health, ServiceInfo
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.body_limit import BodyLimit
from rcsd.services.kit.errors import (
    ServiceError,
    error_response,
    error_responses,
    internal_error_response,
    register_error_handlers,
)
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.request_context import REQUEST_ID_HEADER, set_request_id
from rcsd.services.kit.settings import ServiceSettings

log = logging.getLogger("rcsd.app")
OPEN_PATHS = frozenset({"/health", "/ready"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class LoadedService(Protocol):
    def info(self) -> ServiceInfo: ...

    def is_alive(self) -> bool: ...

    async def aclose(self) -> None: ...


ServiceT = TypeVar("ServiceT", bound=LoadedService)


class ServiceState(Generic[ServiceT]):
    """What the routes need, typed; lives on `app.state.rcsd`."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admission = Admission(
            settings.max_concurrency,
            settings.max_queue,
            settings.max_tokens_in_flight,
            settings.retry_after_s,
            metrics,
        )
        self.service: ServiceT | None = None
        self.load_error: BaseException | None = None
        # Set by the server runner (`rcsd serve`): a failed load stops the process, which then
        # exits non-zero, so a supervisor restarts it or reports it instead of waiting forever.
        self.stop_serving: Callable[[], None] | None = None

    def status(self) -> Literal["ok", "loading", "unavailable", "failed"]:
        """What /ready (and, once the load failed, /health) says."""
        if self.service is not None:
            return "ok" if self.service.is_alive() else "unavailable"
        return "loading" if self.load_error is None else "failed"

    def ready_service(self) -> ServiceT:
        if self.service is None:
            if self.load_error is not None:
                raise ServiceError(503, f"engine failed to load: {self.load_error}", type="unavailable")
            raise ServiceError(
                503, "engine is loading", type="unavailable", retry_after_s=self.settings.retry_after_s
            )
        if not self.service.is_alive():
            raise ServiceError(503, "the engine died; restart this replica", type="unavailable")
        return self.service


def state_of(request: Request) -> ServiceState[Any]:
    return request.app.state.rcsd


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def create_service_app(
    *,
    name: str,
    settings: ServiceSettings,
    load: Callable[[ServiceSettings, ServiceMetrics, Admission], Awaitable[ServiceT]],
    routers: list[APIRouter],
) -> FastAPI:
    metrics = ServiceMetrics(name)
    state: ServiceState[ServiceT] = ServiceState(settings, metrics)

    async def load_in_background() -> None:
        try:
            state.service = await load(settings, metrics, state.admission)
            log.info("ready", extra={"fields": {"service": name, "backend": settings.backend}})
        except Exception as exc:  # reported by /health, /ready and every request, then the exit
            state.load_error = exc
            log.exception("engine failed to load", extra={"fields": {"service": name}})
            if state.stop_serving is not None:
                state.stop_serving()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            if state.service is not None:
                await state.service.aclose()

    app = FastAPI(title=f"rcsd {name} service", version=__version__, lifespan=lifespan)
    app.state.rcsd = state
    register_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # innermost: after auth

    open_paths = (
        OPEN_PATHS
        | (DOCS_PATHS if settings.open_docs else set())
        | ({"/metrics"} if settings.open_metrics else set())
    )

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        key = settings.api_key
        if key is not None and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {key.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(401, "unauthorized", "missing or wrong bearer API key", "authorization")
        return await call_next(request)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Registered last, so it runs first: the request id covers auth errors too.
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

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """Alive unless the engine failed to load or died after loading: a restart is then the only way
        forward, so liveness probes (compose, Kubernetes) must see it. Still loading is alive."""
        status = state.status()
        if status == "loading":
            status = "ok"
        return JSONResponse(Health(status=status).model_dump(), status_code=200 if status == "ok" else 503)

    @app.get("/ready", response_model=Health, responses={503: {"model": Health}})
    async def ready() -> JSONResponse:
        status = state.status()
        return JSONResponse(Health(status=status).model_dump(), status_code=200 if status == "ok" else 503)

    @app.get("/v1/info", response_model=ServiceInfo, responses=error_responses(401, 413, 503))
    async def info() -> ServiceInfo:
        info = state.ready_service().info()
        limits = {
            "max_body_bytes": settings.max_body_bytes,
            "max_tokens_in_flight": settings.max_tokens_in_flight,
        }
        return info.model_copy(update={"limits": {**info.limits, **limits}})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app
