"""Work for a client that went away is stopped, not finished for nobody.

Once the body is read, the next ASGI message is `http.disconnect`, which arrives when the client
closes the connection (a timeout, a cancelled trainer step). The work is then cancelled: the hf
engine stops at its next window, vLLM aborts the request ids it had queued (AsyncLLM.generate
does on cancellation), and the admission slot is given back once the engine has let go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from rcsd.services.kit.app import state_of
from rcsd.services.kit.errors import ServiceError

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for it; only our logs and metrics ever see it


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or, if the client disconnects first, `work` cancelled and a 499."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when we are cancelled ourselves (the server shuts down)
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if watcher.done() and not watcher.cancelled():
                state_of(request).metrics.cancelled.inc()
    if task.cancelled():
        raise ServiceError(CLIENT_CLOSED_REQUEST, "the client closed the connection", type="cancelled")
    return task.result()
