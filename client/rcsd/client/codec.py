"""The binary wire format: msgpack with numpy arrays as raw little-endian buffers.

Nested JSON of floats is slow to build and parse at top_k >= 20; this format moves
the same pydantic model with its arrays as bytes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
import numpy as np
from pydantic import BaseModel

ModelT = TypeVar("ModelT", bound=BaseModel)


def _pack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    raise TypeError(f"cannot pack {type(value).__name__}")


def encode(model: BaseModel) -> bytes:
    """Pack a wire model; array fields travel as buffers."""
    return msgpack.packb(model.model_dump(mode="python"), default=_pack_default, use_bin_type=True)


def decode(data: bytes, model_type: type[ModelT]) -> ModelT:
    """Unpack into the same wire model the JSON path produces."""
    return model_type.model_validate(msgpack.unpackb(data, raw=False))
