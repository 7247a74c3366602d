"""Wire schemas: the single definition that the services and the client both import."""

from rcsd.client.protocol.batch import ItemError, ItemFailed, ItemOk
from rcsd.client.protocol.common import (
    Criterion,
    ErrorDetail,
    ErrorResponse,
    Health,
    ModelInfo,
    ServiceInfo,
)
from rcsd.client.protocol.rubric import (
    RubricBatchItem,
    RubricBatchRequest,
    RubricBatchResponse,
    RubricBounds,
    RubricRequest,
    RubricResponse,
    rubric_problems,
)
from rcsd.client.protocol.teacher import (
    AUTO_RATIONALE,
    CONTEXT_MODES,
    JSON_MEDIA_TYPE,
    MSGPACK_MEDIA_TYPE,
    CompletionScores,
    ContextMode,
    TeacherBatchItem,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)

__all__ = [
    "AUTO_RATIONALE",
    "CONTEXT_MODES",
    "JSON_MEDIA_TYPE",
    "MSGPACK_MEDIA_TYPE",
    "CompletionScores",
    "ContextMode",
    "Criterion",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "ItemError",
    "ItemFailed",
    "ItemOk",
    "ModelInfo",
    "RubricBatchItem",
    "RubricBatchRequest",
    "RubricBatchResponse",
    "RubricBounds",
    "RubricRequest",
    "RubricResponse",
    "ServiceInfo",
    "TeacherBatchItem",
    "TeacherBatchRequest",
    "TeacherBatchResponse",
    "TeacherRequest",
    "TeacherResponse",
    "rubric_problems",
]
