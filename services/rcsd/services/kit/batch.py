"""Batch endpoints answer per item: every item is checked before any work starts, then the items
run together and one that fails does not take the others' results with it.

An item's `ServiceError` (a limit it breaks, a rubric that cannot be generated) becomes its
`ItemFailed`; anything else (the engine died, a bug) still fails the whole request, and the
items still running are cancelled rather than left to compute for nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from rcsd.client.protocol import ItemError, ItemFailed, ItemOk
from rcsd.services.kit.errors import ServiceError

log = logging.getLogger("rcsd.batch")
T = TypeVar("T")
ResultT = TypeVar("ResultT")


def item_failed(exc: ServiceError) -> ItemFailed:
    return ItemFailed(error=ItemError(type=exc.type, message=exc.message, status=exc.status, field=exc.field))


def checked(check: Callable[[], T]) -> T | ItemFailed:
    """`check()`, or the item's failure if it raised a `ServiceError`."""
    try:
        return check()
    except ServiceError as exc:
        return item_failed(exc)


async def settle(
    works: Sequence[Awaitable[ResultT] | ItemFailed], ok: type[ItemOk[ResultT]]
) -> list[ItemOk[ResultT] | ItemFailed]:
    """Runs the works together, in order; an entry that already failed its checks stays failed."""

    async def one(work: Awaitable[ResultT] | ItemFailed) -> ItemOk[ResultT] | ItemFailed:
        if isinstance(work, ItemFailed):
            return work
        try:
            return ok(result=await work)
        except ServiceError as exc:
            return item_failed(exc)

    tasks = [asyncio.ensure_future(one(work)) for work in works]
    try:
        items = list(await asyncio.gather(*tasks))
    finally:  # on an error that fails the whole request, stop the other items' work
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failures = [(i, item.error) for i, item in enumerate(items) if isinstance(item, ItemFailed)]
    if failures:
        log.warning(
            "batch items failed",
            extra={"fields": {"failed": len(failures), "of": len(items), "first": failures[0][1].message}},
        )
    return items
