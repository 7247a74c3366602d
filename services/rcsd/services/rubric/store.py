"""The persistent rubric store: one rubric per generation key, shared by every service process.

A rubric is generated once per key — question, reference answer, generator model and revision, template
version, sampling parameters, seed — and then reused across epochs and across trainers sharing the
service. Two engines implement `RubricStore`: SQLite (`store_sqlite.py`, one host) and PostgreSQL
(`store_postgres.py`, replicas on several hosts); `open_store(url)` picks one by the URL's scheme.

The service generates under the store's cross-process lock, so identical requests generate once even
when they reach two service processes at the same time:

    record = await store.get(key)
    if record is None:
        async with store.generation_lock(key):
            record = await store.get(key)  # another holder may have put it while we waited
            if record is None:
                record = await store.put(await generate(...))
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from rcsd.client.protocol import Criterion, RubricBounds, RubricRequest, RubricResponse

KEY_SCHEME = 1  # bump when the key's inputs change: old rubrics stay stored but stop matching
RUBRIC_ID_PREFIX = "rub_"
RUBRIC_ID_HEX_CHARS = 24  # 96 bits of the key
JSONL_BATCH = 500  # records per transaction on import, per query on export


def rubric_key(
    *,
    question: str,
    reference_answer: str | None,
    model: str,
    model_revision: str,
    template_version: str,
    temperature: float,
    max_tokens: int,
    bounds: RubricBounds,
    seed: int,
    top_p: float = 1.0,
    top_k: int = 0,
) -> str:
    """The sha256 (hex) of everything that determines a generated rubric, as canonical JSON.

    top_p and top_k enter only when they cut (not 1.0, not 0): keys made before they existed still match.
    """
    sampling: dict[str, float | int] = {
        "temperature": float(temperature) + 0.0,  # + 0.0 folds -0.0 into 0.0
        "max_tokens": int(max_tokens),
        "min_criteria": int(bounds.min_criteria),
        "max_criteria": int(bounds.max_criteria),
        "seed": int(seed),
    }
    if top_p != 1.0:
        sampling["top_p"] = float(top_p)
    if top_k != 0:
        sampling["top_k"] = int(top_k)
    payload = {
        "scheme": KEY_SCHEME,
        "question": question,
        "reference_answer": reference_answer,
        "model": model,
        "model_revision": model_revision,
        "template_version": template_version,
        "sampling": sampling,
    }
    # ensure_ascii: the bytes hashed never depend on an encoder's handling of unusual code points.
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def request_key(request: RubricRequest, *, model: str, model_revision: str, template_version: str) -> str:
    """`rubric_key` of a wire request, for the generator identified by the other arguments."""
    return rubric_key(
        question=request.question,
        reference_answer=request.reference_answer,
        model=model,
        model_revision=model_revision,
        template_version=template_version,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        bounds=request.bounds,
        seed=request.seed,
        top_p=request.top_p,
        top_k=request.top_k,
    )


def rubric_id_for(key: str) -> str:
    return RUBRIC_ID_PREFIX + key[:RUBRIC_ID_HEX_CHARS]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class StoredRubric(BaseModel):
    """One generated rubric and what produced it. `rubric_id` is derived from `key` when omitted."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    rubric_id: str = ""
    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    criteria: list[Criterion] = Field(min_length=1)
    model: str
    model_revision: str
    template_version: str
    question: str
    reference_answer: str | None = None
    created_at: AwareDatetime = Field(default_factory=_utc_now)
    attempts: int = Field(default=1, ge=0, description="generations tried before this rubric passed")

    @model_validator(mode="before")
    @classmethod
    def _derive_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("rubric_id") and isinstance(data.get("key"), str):
            return {**data, "rubric_id": rubric_id_for(data["key"])}
        return data

    @model_validator(mode="after")
    def _id_matches_key(self) -> StoredRubric:
        if self.rubric_id != rubric_id_for(self.key):
            raise ValueError(
                f"rubric_id {self.rubric_id!r} does not match key (want {rubric_id_for(self.key)!r})"
            )
        return self

    def response(self, *, cached: bool) -> RubricResponse:
        """The wire answer for this rubric; `attempts` is 0 when served from the store."""
        return RubricResponse(
            rubric_id=self.rubric_id,
            criteria=self.criteria,
            model=self.model,
            model_revision=self.model_revision,
            template_version=self.template_version,
            cached=cached,
            attempts=0 if cached else self.attempts,
        )


class GenerationLockTimeout(TimeoutError):
    """`generation_lock(key, timeout=...)` waited `timeout` seconds without getting the lock."""


class RubricStore(abc.ABC):
    """Rubrics by key, durable, shared between processes. Every method is async and never blocks the loop.

    Records are never updated or deleted: `put` of an existing key keeps the first record.
    Use as `async with await open_store(url) as store:` or call `aclose()`.
    """

    @abc.abstractmethod
    async def get(self, key: str) -> StoredRubric | None: ...

    @abc.abstractmethod
    async def get_by_id(self, rubric_id: str) -> StoredRubric | None: ...

    @abc.abstractmethod
    async def put(self, record: StoredRubric) -> StoredRubric:
        """Store `record` unless its key is stored already; return the record stored under the key."""

    @abc.abstractmethod
    async def put_many(self, records: Sequence[StoredRubric]) -> int:
        """Store the records whose keys are new, in one transaction; return how many were added."""

    @abc.abstractmethod
    async def scan(self, *, after_key: str | None, limit: int) -> list[StoredRubric]:
        """Up to `limit` records with key > `after_key`, in key order (a page of the whole store)."""

    @abc.abstractmethod
    async def count(self) -> int: ...

    @abc.abstractmethod
    def generation_lock(self, key: str, *, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        """Hold the cross-process lock of `key` (wait `timeout` seconds at most, then raise
        `GenerationLockTimeout`). The lock is released if its holder dies, so it never blocks forever."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def export_jsonl(self, target: str | os.PathLike[str] | TextIO) -> int:
        """Write every record as one JSON line, in key order; return how many. A path is written to a
        temporary sibling and renamed into place, so a crash never leaves a partial export there."""
        if not isinstance(target, (str, os.PathLike)):
            return await self._write_jsonl(target)
        path = Path(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                written = await self._write_jsonl(stream)
                await asyncio.to_thread(_flush_and_sync, stream)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return written

    async def import_jsonl(self, source: str | os.PathLike[str] | TextIO) -> int:
        """Add the records of a JSONL export whose keys are new; return how many were added.
        Idempotent: importing the same file twice adds nothing the second time."""
        if not isinstance(source, (str, os.PathLike)):
            return await self._read_jsonl(source, name="<stream>")
        with open(source, encoding="utf-8") as stream:
            return await self._read_jsonl(stream, name=os.fspath(source))

    async def _write_jsonl(self, stream: TextIO) -> int:
        written, after_key = 0, None
        while page := await self.scan(after_key=after_key, limit=JSONL_BATCH):
            text = "".join(record.model_dump_json() + "\n" for record in page)
            await asyncio.to_thread(stream.write, text)
            written, after_key = written + len(page), page[-1].key
        return written

    async def _read_jsonl(self, stream: TextIO, *, name: str) -> int:
        added, line_no = 0, 0
        while lines := await asyncio.to_thread(_read_lines, stream, JSONL_BATCH):
            records = []
            for line in lines:
                line_no += 1
                if line.strip():
                    records.append(_parse_line(line, where=f"{name}:{line_no}"))
            if records:
                added += await self.put_many(records)
        return added

    async def __aenter__(self) -> RubricStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _parse_line(line: str, *, where: str) -> StoredRubric:
    try:
        return StoredRubric.model_validate_json(line)
    except ValidationError as exc:
        raise ValueError(f"{where}: not a stored rubric: {exc}") from exc


def _read_lines(stream: TextIO, n: int) -> list[str]:
    lines: list[str] = []
    for line in stream:
        lines.append(line)
        if len(lines) == n:
            break
    return lines


def _flush_and_sync(stream: TextIO) -> None:
    stream.flush()
    os.fsync(stream.fileno())


async def open_store(url: str) -> RubricStore:
    """Open (creating tables if missing) the store at `url`:

    - `sqlite:///relative/path.db` or `sqlite:////absolute/path.db` (SQLAlchemy's spelling): one host;
    - `postgresql://user@host:port/dbname` (or `postgres://`): any libpq URL; replicas on several hosts.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite":
        from rcsd.services.rubric.store_sqlite import SqliteRubricStore

        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:" or "?" in path:
            raise ValueError(f"sqlite store URL needs a file path (sqlite:///path/to.db), got {url!r}")
        return await SqliteRubricStore.open(path)
    if sep and scheme in ("postgresql", "postgres"):
        from rcsd.services.rubric.store_postgres import PostgresRubricStore

        return await PostgresRubricStore.open(url)
    raise ValueError(f"unsupported rubric store URL {url!r}: use sqlite:///path.db or postgresql://...")
