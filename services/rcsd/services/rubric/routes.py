"""Thin HTTP routes of the rubric service; the logic lives in `service.py`.

The data routes live under `/v1/`; their first paths (`/rubrics`, ...) still answer, as deprecated
aliases hidden from the OpenAPI schema, so clients released before `/v1` keep working.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from rcsd.client.protocol import (
    RubricBatchRequest,
    RubricBatchResponse,
    RubricRequest,
    RubricResponse,
)
from rcsd.services.kit.app import state_of
from rcsd.services.kit.disconnect import unless_disconnected
from rcsd.services.kit.errors import error_responses
from rcsd.services.rubric.service import RubricService

router = APIRouter(tags=["rubric"], responses=error_responses(401, 413, 503))
OLD_PATH = {"deprecated": True, "include_in_schema": False}  # the pre-/v1 alias of a route


def get_rubrics(request: Request) -> RubricService:
    return state_of(request).ready_service()


Rubrics = Annotated[RubricService, Depends(get_rubrics)]


@router.post("/rubrics", response_model=RubricResponse, **OLD_PATH)
@router.post(
    "/v1/rubrics",
    response_model=RubricResponse,
    responses=error_responses(400, 422, 429, 507),
    summary="The rubric for a question: from the store, or generated once and stored",
)
async def create_rubric(body: RubricRequest, request: Request, rubrics: Rubrics) -> RubricResponse:
    return await unless_disconnected(request, rubrics.generate(body))


@router.post("/rubrics/batch", response_model=RubricBatchResponse, **OLD_PATH)
@router.post(
    "/v1/rubrics/batch",
    response_model=RubricBatchResponse,
    responses=error_responses(400, 422, 429, 507),
    summary="Rubrics for many questions in one call (results in request order)",
)
async def create_rubrics(body: RubricBatchRequest, request: Request, rubrics: Rubrics) -> RubricBatchResponse:
    return await unless_disconnected(request, rubrics.generate_batch(body))


@router.get("/rubrics/{rubric_id}", response_model=RubricResponse, **OLD_PATH)
@router.get(
    "/v1/rubrics/{rubric_id}",
    response_model=RubricResponse,
    responses=error_responses(404, 422),
    summary="A stored rubric by id",
)
async def read_rubric(rubric_id: str, rubrics: Rubrics) -> RubricResponse:
    return await rubrics.get(rubric_id)
