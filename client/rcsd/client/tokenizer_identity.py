"""The canonical identity of a tokenizer, shared by the teacher service and its clients.

Two tokenizers give the same token ids for the same text when their vocab, their BPE merges
(order included) and their special tokens agree; `tokenizer_hash` is a sha256 over exactly
those. The service reports it in `GET /v1/info` and in every `TeacherResponse`; the client
computes it on the trainer's tokenizer and refuses a teacher whose hash differs.

Pure Python, duck-typed on a transformers tokenizer: `get_vocab()`, optionally
`backend_tokenizer.to_str()` (its JSON's `model.merges`) and `all_special_tokens`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def tokenizer_hash(tokenizer: Any) -> str:
    """Hex sha256 over the tokenizer's vocab (token -> id), merges and special tokens."""
    vocab = tokenizer.get_vocab()
    payload = {
        "vocab": sorted(([str(token), int(token_id)] for token, token_id in vocab.items()), key=_by_id),
        "merges": _merges(tokenizer),
        "special_tokens": sorted({str(token) for token in getattr(tokenizer, "all_special_tokens", [])}),
    }
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """Number of tokens the tokenizer can produce, added tokens included (`len(tokenizer)`)."""
    try:
        return len(tokenizer)
    except TypeError:
        return len(tokenizer.get_vocab())


def _by_id(item: list[Any]) -> tuple[int, str]:
    return item[1], item[0]


def _merges(tokenizer: Any) -> list[list[str]]:
    """BPE merges in rank order as [left, right] pairs (both serialisations of `tokenizers`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    model = json.loads(backend.to_str()).get("model") or {}
    merges = model.get("merges") or []
    return [merge.split(" ", 1) if isinstance(merge, str) else [str(m) for m in merge] for merge in merges]
