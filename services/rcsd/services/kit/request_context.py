"""The request id and the caller's key name, in context variables: logs, error bodies, admission read them."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"
_request_id: ContextVar[str | None] = ContextVar("rcsd_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(request_id: str | None) -> None:
    _request_id.set(request_id)


_key_name: ContextVar[str | None] = ContextVar("rcsd_key_name", default=None)


def current_key_name() -> str | None:
    """The name of the API key the current request authenticated with (None: outside a request)."""
    return _key_name.get()


def set_key_name(name: str | None) -> None:
    _key_name.set(name)
