"""The app shell both services share: the engine loaded in the lifespan, the state the routes read.

A service supplies a loader (builds its engine and logic, off the request path) and its routers; the
shell adds auth and request ids (`kit.middleware`) and health/ready/info/metrics (`kit.operations`).
Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, Protocol, TypeVar

from fastapi import APIRouter, FastAPI, Request

from rcsd.client import __version__
from rcsd.client.protocol import ServiceInfo
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.body_limit import BodyLimit
from rcsd.services.kit.errors import ServiceError, register_error_handlers
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.middleware import add_authentication, add_observation
from rcsd.services.kit.operations import operations_router
from rcsd.services.kit.settings import ServiceSettings

log = logging.getLogger("rcsd.app")


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
            served = state.service.info()
            metrics.describe_service(served.model.name, served.model.revision, served.backend)
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
    add_authentication(app, settings, metrics)
    add_observation(app, metrics)  # added last, so it runs first: the request id covers auth errors too
    app.include_router(operations_router(state))
    for router in routers:
        app.include_router(router)
    return app
