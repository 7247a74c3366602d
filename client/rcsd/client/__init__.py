"""rcsd client: typed HTTP clients for the rubric and teacher services (no torch, no vLLM).

from rcsd.client import TeacherClient, TeacherRequest

with TeacherClient(["http://teacher-0:8000", "http://teacher-1:8000"], api_key=key) as teacher:
    teacher.check_compatible(tokenizer)
    responses = teacher.score_batch([TeacherRequest(question=q, completions=ids, ...)])
"""

from rcsd.client._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchError,
    IncompatibleTokenizerError,
    InternalServerError,
    LimitExceededError,
    NotFoundError,
    RateLimitError,
    RcsdError,
    ServiceUnavailableError,
    TeacherChangedError,
)
from rcsd.client._version import __version__
from rcsd.client.protocol import (
    CompletionScores,
    Criterion,
    ErrorResponse,
    ItemError,
    ModelInfo,
    RubricBatchRequest,
    RubricBatchResponse,
    RubricBounds,
    RubricRequest,
    RubricResponse,
    ServiceInfo,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.client.rubric import AsyncRubricClient, RubricClient
from rcsd.client.teacher import AsyncTeacherClient, TeacherClient
from rcsd.client.tensors import to_padded_tensors
from rcsd.client.tokenizer_identity import tokenizer_hash, tokenizer_vocab_size

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncRubricClient",
    "AsyncTeacherClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "CompletionScores",
    "Criterion",
    "ErrorResponse",
    "IncompatibleTokenizerError",
    "InternalServerError",
    "ItemError",
    "LimitExceededError",
    "ModelInfo",
    "NotFoundError",
    "RateLimitError",
    "RcsdError",
    "RubricBatchRequest",
    "RubricBatchResponse",
    "RubricBounds",
    "RubricClient",
    "RubricRequest",
    "RubricResponse",
    "ServiceInfo",
    "ServiceUnavailableError",
    "TeacherBatchRequest",
    "TeacherChangedError",
    "TeacherBatchResponse",
    "TeacherClient",
    "TeacherRequest",
    "TeacherResponse",
    "__version__",
    "to_padded_tensors",
    "tokenizer_hash",
    "tokenizer_vocab_size",
]
