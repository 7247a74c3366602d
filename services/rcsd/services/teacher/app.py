"""`create_app(settings)`: the teacher service as an ASGI app; nothing is built at import."""

from __future__ import annotations

from fastapi import FastAPI

from rcsd.services.engines.loader import load_engine
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.app import create_service_app
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.settings import ServiceSettings
from rcsd.services.teacher.routes import router
from rcsd.services.teacher.service import TeacherService
from rcsd.services.teacher.settings import TeacherSettings


async def load_teacher(
    settings: ServiceSettings, metrics: ServiceMetrics, admission: Admission
) -> TeacherService:
    assert isinstance(settings, TeacherSettings)
    engine = await load_engine(settings.backend, settings.engine_config(max_top_k=settings.max_top_k))
    return TeacherService(engine, settings, metrics, admission)


def create_app(settings: TeacherSettings) -> FastAPI:
    return create_service_app(name="teacher", settings=settings, load=load_teacher, routers=[router])
