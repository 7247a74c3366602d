"""`create_app(settings)`: the rubric service as an ASGI app; nothing is built at import."""

from __future__ import annotations

from fastapi import FastAPI

from rcsd.services.engines.loader import load_engine
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.app import create_service_app
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.rubric.routes import router
from rcsd.services.rubric.service import RubricService
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.rubric.store import open_store


async def load_rubrics(
    settings: ServiceSettings, metrics: ServiceMetrics, admission: Admission
) -> RubricService:
    assert isinstance(settings, RubricSettings)
    store = await open_store(settings.store_url)
    try:
        engine = await load_engine(settings.backend, settings.engine_config(adapter=settings.adapter))
    except BaseException:
        await store.aclose()  # else its connections (a PostgreSQL pool) outlive the failed load
        raise
    return RubricService(engine, store, settings, metrics, admission)


def create_app(settings: RubricSettings) -> FastAPI:
    return create_service_app(name="rubric", settings=settings, load=load_rubrics, routers=[router])
