"""Stable identities: which model revision and which tokenizer a service serves.

Trainers compare the tokenizer hash with their own tokenizer's before they trust
token-id-level scores; the revision goes into every response and cache key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rcsd.client.tokenizer_identity import tokenizer_hash

__all__ = ["model_revision", "tokenizer_hash"]


def model_revision(model: str, revision: str | None, adapter: str | None = None) -> str:
    """The given revision, or for a local folder a hash of its config and weight file sizes."""
    parts = [revision or _folder_fingerprint(model)]
    if adapter:
        parts.append("lora:" + _folder_fingerprint(adapter))
    return "+".join(parts)


def _folder_fingerprint(path: str) -> str:
    folder = Path(path)
    if not folder.is_dir():
        return "main"
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}:
            digest.update(file.name.encode())
            digest.update(str(file.stat().st_size).encode())
            if file.suffix == ".json":
                digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
