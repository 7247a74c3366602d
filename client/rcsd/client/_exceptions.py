"""The error tree of the rcsd clients.

RcsdError
├── APIError
│   ├── APIStatusError            the server answered non-2xx (status, request id, its message)
│   │   ├── BadRequestError       400, 422
│   │   ├── AuthenticationError   401
│   │   ├── NotFoundError         404
│   │   ├── RateLimitError        429
│   │   ├── ServiceUnavailableError 503
│   │   └── InternalServerError   other 5xx
│   ├── APIConnectionError        no answer (refused, reset, ...)
│   │   └── APITimeoutError
│   └── APIResponseValidationError  an answer that does not parse as the expected schema
├── BatchError                    some items of a batch failed; the others' results are kept
├── IncompatibleTokenizerError    the service's tokenizer is not the caller's
├── TeacherChangedError           the teacher's model revision changed during the run
└── LimitExceededError            a request that cannot fit the service's limits, however split
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import httpx
from pydantic import ValidationError

from rcsd.client._constants import REQUEST_ID_HEADER
from rcsd.client.protocol import ErrorResponse, ItemError

ResultT = TypeVar("ResultT")


class RcsdError(Exception):
    """Base of every error the rcsd clients raise."""


class APIError(RcsdError):
    """A request to a service failed; `message` says why."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.attempts = 1

    def _gave_up(self, attempts: int, elapsed_s: float) -> None:
        """Say in the message that retries were spent (the cause is still the server's words)."""
        self.attempts = attempts
        self.message = f"{self.message} [gave up after {attempts} attempts in {elapsed_s:.1f}s]"
        self.args = (self.message,)


class APIStatusError(APIError):
    """The server answered with a non-2xx status and an `ErrorResponse` body."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        error_type: str | None,
        field: str | None,
        request_id: str | None,
        server_message: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.error_type = error_type
        self.field = field
        self.request_id = request_id
        self.server_message = server_message
        self.param = param  # OpenAI's name for the field at fault (older servers: `field`)
        self.code = code  # a stable machine-readable reason, when the server gives one


class BadRequestError(APIStatusError):
    """400 or 422: the request is wrong; retrying will not help."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class NotFoundError(APIStatusError):
    """404: no such resource (e.g. an unknown rubric id)."""


class RateLimitError(APIStatusError):
    """429: the admission queue is full."""


class ServiceUnavailableError(APIStatusError):
    """503: the engine is loading or the service is shutting down."""


class InternalServerError(APIStatusError):
    """Any other 5xx."""


class APIConnectionError(APIError):
    """No HTTP answer: the connection was refused, reset or broken."""


class APITimeoutError(APIConnectionError):
    """The attempt ran past its timeout (or the call past its deadline)."""


class APIResponseValidationError(APIError):
    """A 2xx answer whose body is not the schema the endpoint promises."""


class BatchError(RcsdError, Generic[ResultT]):
    """Some items of a batch failed on their own; the rest succeeded and are kept.

    `outcomes[i]` is item i's result or its `ItemError`, in the caller's order, and each error's
    `field` is a path in the caller's terms (`groups.3.completions.0`), however the batch was split.
    """

    def __init__(self, outcomes: Sequence[ResultT | ItemError]) -> None:
        self.outcomes = list(outcomes)
        self.errors = {i: o for i, o in enumerate(self.outcomes) if isinstance(o, ItemError)}
        self.results = {i: o for i, o in enumerate(self.outcomes) if not isinstance(o, ItemError)}
        index, first = next(iter(self.errors.items()))
        where = f" [field: {first.field}]" if first.field else ""
        super().__init__(
            f"{len(self.errors)} of {len(self.outcomes)} batch items failed; "
            f"item {index}: {first.status} ({first.type}) {first.message}{where}"
        )


def raise_for_items(outcomes: Sequence[ResultT | ItemError]) -> list[ResultT]:
    """The results when every item succeeded, else a `BatchError` carrying results and errors."""
    results = [o for o in outcomes if not isinstance(o, ItemError)]
    if len(results) < len(outcomes):
        raise BatchError(outcomes)
    return results


class IncompatibleTokenizerError(RcsdError):
    """The teacher's tokenizer differs from the caller's, so token ids would mean different things."""


class TeacherChangedError(RcsdError):
    """The teacher's model revision changed during a run (`pin_teacher=False` allows it)."""


class LimitExceededError(RcsdError, ValueError):
    """A request that no split can make fit the service's limits (raised before anything is sent)."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Map a non-2xx answer to its exception, keeping what the server said."""
    error_type = field = body_request_id = param = code = None
    try:
        detail = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        server_message = response.text[:500].strip() or response.reason_phrase
    else:
        error_type, field, body_request_id = detail.type, detail.field, detail.request_id
        param, code = detail.param or detail.field, detail.code
        server_message = detail.message
    request_id = body_request_id or response.headers.get(REQUEST_ID_HEADER)

    message = f"{response.status_code} from {response.request.url}"
    if error_type:
        message += f" ({error_type})"
    message += f": {server_message}"
    if field:
        message += f" [field: {field}]"
    if request_id:
        message += f" [request id: {request_id}]"

    status = response.status_code
    cls = _STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(
        message,
        response=response,
        error_type=error_type,
        field=field,
        request_id=request_id,
        server_message=server_message,
        param=param,
        code=code,
    )
