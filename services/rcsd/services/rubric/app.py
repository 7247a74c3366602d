"""`create_app(settings)`: the rubric service as an ASGI app; nothing is built at import."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rcsd.services.engines.loader import load_engine
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.app import create_service_app
from rcsd.services.kit.errors import error_response
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


log = logging.getLogger("rcsd.rubric")
STORE_ERRORS = (sqlite3.OperationalError, psycopg.OperationalError, psycopg_pool.PoolTimeout)


def create_app(settings: RubricSettings) -> FastAPI:
    app = create_service_app(name="rubric", settings=settings, load=load_rubrics, routers=[router])

    async def store_failed(_: Request, exc: Exception) -> JSONResponse:
        """The store failing is no bug of ours and no fault of the request: 507 while its disk is full,
        else 503 with Retry-After (the database restarting, unreachable, or locked for too long)."""
        log.error("rubric store failed: %s", exc)
        if "full" in str(exc):  # SQLite's SQLITE_FULL: "database or disk is full"
            return error_response(507, "store_full", f"the rubric store is full: {exc}")
        headers = {"Retry-After": str(settings.retry_after_s)}
        return error_response(503, "unavailable", f"the rubric store is unavailable: {exc}", headers=headers)

    for error in STORE_ERRORS:
        app.add_exception_handler(error, store_failed)
    return app
