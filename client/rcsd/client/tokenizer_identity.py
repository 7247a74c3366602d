"""The canonical identity of a tokenizer, shared by the teacher service and its clients.

Two tokenizers give the same token ids for the same text when their vocab, their BPE merges
(order included) and their special tokens agree, and the same prompt ids for the same chat
messages when their chat templates agree too; `tokenizer_hash` is a sha256 over exactly those. The service reports it in `GET /v1/info` and in every `TeacherResponse`; the client
computes it on the trainer's tokenizer and refuses a teacher whose hash differs.

Pure Python, duck-typed on a transformers tokenizer: `get_vocab()`, optionally
`backend_tokenizer.to_str()` (its JSON's `model.merges`), `all_special_tokens` and `chat_template`
(a string, or a dict of named templates; a tokenizer without one hashes as before templates counted).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def tokenizer_hash(tokenizer: Any) -> str:
    """Hex sha256 over the tokenizer's vocab (token -> id), merges, special tokens and chat template."""
    vocab = tokenizer.get_vocab()
    payload: dict[str, Any] = {
        "vocab": sorted(([str(token), int(token_id)] for token, token_id in vocab.items()), key=_by_id),
        "merges": _merges(tokenizer),
        "special_tokens": sorted({str(token) for token in getattr(tokenizer, "all_special_tokens", [])}),
    }
    chat_template = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str | dict) and chat_template:
        payload["chat_template"] = chat_template  # a dict (named templates) is hashed with sorted keys
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
