"""Per-item answers of the batch endpoints: each item is a result or an error, told apart by `ok`.

    {"results": [{"ok": true, "result": {...}}, {"ok": false, "error": {"type": ..., "message": ..., "field": ...}}]}

A malformed batch (bad JSON, too many items, an unknown field) is still one 4xx for the whole
request; an item that fails on its own (an unsolvable question, a group over max_model_len)
fails alone and the other items keep their results.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import Field

from rcsd.client.protocol.common import ResponseModel

ResultT = TypeVar("ResultT")


class ItemError(ResponseModel):
    """Why one item failed: `status` is what it would have got alone, `field` a path in the batch request."""

    type: str
    message: str
    status: int = Field(ge=400, le=599)
    field: str | None = None


class ItemOk(ResponseModel, Generic[ResultT]):
    ok: Literal[True] = True
    result: ResultT


class ItemFailed(ResponseModel):
    ok: Literal[False] = False
    error: ItemError
