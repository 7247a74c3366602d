"""Content negotiation: JSON by default, msgpack when the client accepts it."""

from __future__ import annotations

from fastapi import Request, Response
from pydantic import BaseModel

from rcsd.client import codec
from rcsd.client.protocol import MSGPACK_MEDIA_TYPE


def negotiated(request: Request, model: BaseModel) -> Response:
    if MSGPACK_MEDIA_TYPE in request.headers.get("accept", ""):
        return Response(codec.encode(model), media_type=MSGPACK_MEDIA_TYPE)
    return Response(model.model_dump_json(), media_type="application/json")
