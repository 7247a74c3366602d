"""Stable identities: which model revision and which tokenizer a service serves.

Trainers compare the tokenizer hash with their own tokenizer's before they trust
token-id-level scores; the revision goes into every response and cache key (the rubric
store's key, the vLLM merged-adapter folder), so it must change whenever the weights do:
- a local folder (a checkpoint, a LoRA adapter) is identified by a hash of its files' bytes.
  Hashing is streamed and remembered in a small JSON cache keyed by path, mtime and size, so
  a restart re-reads nothing that did not change;
- a Hugging Face model id is identified by its commit: the `revision` given if it is one,
  else the commit that the local HF cache resolves it to, else the one the Hub resolves it to
  (a merged adapter is named before the base is downloaded). If none, the service refuses to
  start: "main" names different weights from one day to the next.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from rcsd.client.tokenizer_identity import tokenizer_hash
from rcsd.loading.bundled import default_cache_dir

__all__ = ["UnresolvedRevision", "folder_fingerprint", "model_revision", "tokenizer_hash"]

FINGERPRINT_CHARS = 16  # of the sha256 hex: 64 bits, enough to tell checkpoints apart
HASHED_SUFFIXES = frozenset(
    {".json", ".safetensors", ".bin", ".pt", ".model", ".txt", ".py", ".tiktoken", ".jinja"}
)
CACHE_FILE = "file-hashes.json"
_CHUNK_BYTES = 8 << 20
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class UnresolvedRevision(ValueError):
    """A hub model id whose commit is neither given nor in the local HF cache."""


def model_revision(model: str, revision: str | None, adapter: str | None = None) -> str:
    """`<base>` or `<base>+lora:<adapter fingerprint>`; base: a folder's fingerprint or a hub commit."""
    base = folder_fingerprint(model) if Path(model).is_dir() else _hub_commit(model, revision)
    return f"{base}+lora:{folder_fingerprint(adapter)}" if adapter else base


def folder_fingerprint(path: str) -> str:
    """A hash of the names and bytes of a folder's model files (weights, configs, tokenizer)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in HASHED_SUFFIXES)
    cache = _HashCache(default_cache_dir() / CACHE_FILE)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{cache.file_hash(file)}\n".encode())
    cache.save()
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def _hub_commit(model: str, revision: str | None) -> str:
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    found = try_to_load_from_cache(model, "config.json", revision=revision)
    if isinstance(found, str):  # .../models--org--name/snapshots/<commit>/config.json
        return Path(found).parent.name
    try:
        commit = HfApi().model_info(model, revision=revision).sha
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        cause = f"{type(exc).__name__}: {exc}"
    else:
        if commit:
            return commit
        cause = "the Hub named no commit"
    raise UnresolvedRevision(
        f"model {model!r} is neither a local folder nor in the local Hugging Face cache at revision "
        f"{revision or 'main'!r}, and the Hub did not resolve it ({cause}), so the weights it names "
        "cannot be pinned: pass --revision <commit sha> or a local folder"
    )


class _HashCache:
    """sha256 of files by (resolved path, mtime_ns, size); an unreadable cache is rebuilt, not fatal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changed = False
        try:
            self.entries: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def file_hash(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
        if key not in self.entries:
            digest = hashlib.sha256()
            with open(file, "rb") as stream:
                while chunk := stream.read(_CHUNK_BYTES):
                    digest.update(chunk)
            self.entries[key] = digest.hexdigest()
            self.changed = True
        return self.entries[key]

    def save(self) -> None:
        """Written whole and renamed, so concurrent services never read half a file."""
        if not self.changed:
            return
        self.entries = {key: value for key, value in self.entries.items() if _still_current(key)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as stream:
            json.dump(self.entries, stream)
        os.replace(scratch, self.path)


def _still_current(key: str) -> bool:
    """False for an entry of a file since deleted or changed: the cache does not grow forever."""
    path, mtime_ns, size = key.rsplit("|", 2)
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (str(stat.st_mtime_ns), str(stat.st_size)) == (mtime_ns, size)
