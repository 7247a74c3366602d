"""Numpy-backed array fields for the wire schemas.

One pydantic model serves both wire formats: JSON carries plain lists, the binary
(msgpack) format carries raw little-endian buffers. In Python the field is always a
numpy array, so callers never care which format travelled.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema


def _validator(dtype: type[np.generic], ndim: int):
    def validate(value: Any) -> np.ndarray:
        if isinstance(value, dict) and "data" in value:  # a packed buffer from the binary codec
            array = np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        else:
            array = np.asarray(value)
            if array.size == 0:
                array = array.reshape((0,) * ndim)
        if array.ndim != ndim:
            raise ValueError(f"expected a {ndim}-d array, got {array.ndim}-d")
        return array.astype(dtype, copy=False)

    return validate


def _to_list(array: np.ndarray, info: Any) -> Any:
    # mode="python" keeps the array (the binary codec packs it); JSON gets lists.
    return array if info.mode == "python" else array.tolist()


def _schema(item: str, ndim: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": item}
    for _ in range(ndim):
        schema = {"type": "array", "items": schema}
    return schema


def _array(dtype: type[np.generic], item: str, ndim: int) -> Any:
    return Annotated[
        np.ndarray,
        PlainValidator(_validator(dtype, ndim)),
        PlainSerializer(_to_list),
        WithJsonSchema(_schema(item, ndim)),
    ]


Int32Array1D = _array(np.int32, "integer", 1)
Int32Array2D = _array(np.int32, "integer", 2)
Float32Array1D = _array(np.float32, "number", 1)
Float32Array2D = _array(np.float32, "number", 2)
