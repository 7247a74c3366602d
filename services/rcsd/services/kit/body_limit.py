"""A request body limit, enforced while the body arrives: nothing over it is buffered or parsed.

A declared `Content-Length` over the limit is refused before a byte is read; a body sent without
one (chunked) is counted as it streams and refused once the count passes the limit. Either way
the answer is a 413 in the one error format, from inside the request-id/metrics middleware.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """A FastAPI HTTPException, so FastAPI's body reading passes it on instead of making it a 400."""

    def __init__(self, max_bytes: int, seen: str) -> None:
        super().__init__(413, f"request body {seen} exceeds max_body_bytes {max_bytes}")


class BodyLimit:
    """ASGI middleware: wraps `receive` so that reading a too-large body raises `BodyTooLarge`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        received = 0

        async def counted() -> Message:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise BodyTooLarge(self.max_bytes, f"of {int(declared)} bytes (Content-Length)")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes, f"over {received} bytes (so far)")
            return message

        await self.app(scope, counted, send)
