"""Content negotiation: JSON by default, msgpack when the client accepts it."""

from __future__ import annotations

import asyncio

from fastapi import Request, Response
from pydantic import BaseModel

from rcsd.client import codec
from rcsd.client.protocol import MSGPACK_MEDIA_TYPE


async def negotiated(request: Request, model: BaseModel) -> Response:
    """Serialising a large answer is CPU work: it runs off the event loop."""
    if MSGPACK_MEDIA_TYPE in request.headers.get("accept", ""):
        return Response(await asyncio.to_thread(codec.encode, model), media_type=MSGPACK_MEDIA_TYPE)
    return Response(await asyncio.to_thread(model.model_dump_json), media_type="application/json")
