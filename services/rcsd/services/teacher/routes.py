"""Thin HTTP routes of the teacher service; the logic lives in `service.py`.

The data routes live under `/v1/`; their first paths (`/teacher_logprobs`, ...) still answer, as
deprecated aliases hidden from the OpenAPI schema, so clients released before `/v1` keep working.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from rcsd.client.protocol import (
    MSGPACK_MEDIA_TYPE,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.services.kit.app import state_of
from rcsd.services.kit.disconnect import unless_disconnected
from rcsd.services.kit.errors import error_responses
from rcsd.services.kit.responses import negotiated
from rcsd.services.teacher.service import TeacherService

router = APIRouter(tags=["teacher"], responses=error_responses())
BINARY = {"content": {MSGPACK_MEDIA_TYPE: {}}}
OLD_PATH = {"deprecated": True, "include_in_schema": False}  # the pre-/v1 alias of a route


def get_teacher(request: Request) -> TeacherService:
    return state_of(request).ready_service()


Teacher = Annotated[TeacherService, Depends(get_teacher)]


@router.post("/teacher_logprobs", response_model=TeacherResponse, **OLD_PATH)
@router.post(
    "/v1/teacher_logprobs",
    response_model=TeacherResponse,
    responses={200: BINARY},
    summary="Score one prompt group's completions under the teacher's privileged context",
)
async def teacher_logprobs(body: TeacherRequest, request: Request, teacher: Teacher) -> Response:
    return await negotiated(request, await unless_disconnected(request, teacher.score(body)))


@router.post("/teacher_logprobs/batch", response_model=TeacherBatchResponse, **OLD_PATH)
@router.post(
    "/v1/teacher_logprobs/batch",
    response_model=TeacherBatchResponse,
    responses={200: BINARY},
    summary="Score many prompt groups in one call (results in request order)",
)
async def teacher_logprobs_batch(body: TeacherBatchRequest, request: Request, teacher: Teacher) -> Response:
    return await negotiated(request, await unless_disconnected(request, teacher.score_batch(body)))
