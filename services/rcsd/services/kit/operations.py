"""The operator's routes of every service: liveness, readiness, what is served, its version, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from rcsd.client import __version__
from rcsd.client.protocol import Health, ServiceInfo, VersionInfo
from rcsd.services.kit.errors import error_responses

if TYPE_CHECKING:
    from rcsd.services.kit.app import ServiceState


def operations_router(state: ServiceState[Any]) -> APIRouter:
    router = APIRouter()
    settings = state.settings

    @router.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """Alive unless the engine failed to load or died after loading: a restart is then the only way
        forward, so liveness probes (compose, Kubernetes) must see it. Still loading is alive."""
        status = state.status()
        if status == "loading":
            status = "ok"
        return JSONResponse(Health(status=status).model_dump(), status_code=200 if status == "ok" else 503)

    @router.get("/ready", response_model=Health, responses={503: {"model": Health}})
    async def ready() -> JSONResponse:
        status = state.status()
        return JSONResponse(Health(status=status).model_dump(), status_code=200 if status == "ok" else 503)

    @router.get("/v1/info", response_model=ServiceInfo, responses=error_responses(401, 413, 503))
    async def info() -> ServiceInfo:
        info = state.ready_service().info()
        limits = {
            "max_body_bytes": settings.max_body_bytes,
            "max_tokens_in_flight": settings.max_tokens_in_flight,
        }
        return info.model_copy(update={"limits": {**info.limits, **limits}, "version": __version__})

    @router.get("/version", response_model=VersionInfo)
    async def version() -> VersionInfo:
        """The server's rcsd version, open like /health (as vLLM's `/version`): what a rollout checks."""
        return VersionInfo(version=__version__)

    @router.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
