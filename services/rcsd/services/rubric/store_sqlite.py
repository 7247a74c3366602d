"""`RubricStore` on SQLite: one file, WAL mode, for service processes on ONE host.

SQLite on a network filesystem (NFS, SMB, most cloud volumes mounted on several hosts) is not supported:
its locking is unreliable there and the database can be corrupted. Use PostgreSQL for replicas on
several hosts.

- Every sqlite3 call runs on one worker thread that owns the connection, so the event loop never blocks.
- WAL with synchronous=FULL: a committed rubric survives a process crash (kill -9) and a power loss;
  an interrupted transaction is rolled back when the database is next opened.
- busy_timeout: a writer waits for another process's write instead of failing.
- The generation lock is an exclusive `flock` on a per-key file in `<db>.locks/`. The kernel drops it
  when the holder's file is closed, including when the process dies, so a killed holder never blocks
  anyone. flock conflicts between two open files even in one process, so it also serialises tasks.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from rcsd.services.rubric.store import GenerationLockTimeout, RubricStore, StoredRubric

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 30.0
LOCK_POLL_S = (0.005, 0.1)  # first and longest wait between tries of a held generation lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rubrics (
    key TEXT PRIMARY KEY,
    rubric_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
)
"""
_INSERT = "INSERT INTO rubrics (key, rubric_id, created_at, record) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"


class SqliteRubricStore(RubricStore):
    """Build with `await SqliteRubricStore.open(path)` (or `open_store("sqlite:///path")`)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self.lock_dir = path.with_name(path.name + ".locks")
        self._conn = conn
        self._executor = executor
        self._closed = False

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> SqliteRubricStore:
        db_path = Path(path).expanduser().resolve()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rubric-sqlite")
        try:
            loop = asyncio.get_running_loop()
            conn = await loop.run_in_executor(executor, _connect, db_path, busy_timeout_s)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(db_path, conn, executor)
        store.lock_dir.mkdir(exist_ok=True)
        return store

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("rubric store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, self._conn, *args))

    async def get(self, key: str) -> StoredRubric | None:
        return await self._run(_select_one, "key", key)

    async def get_by_id(self, rubric_id: str) -> StoredRubric | None:
        return await self._run(_select_one, "rubric_id", rubric_id)

    async def put(self, record: StoredRubric) -> StoredRubric:
        return await self._run(_put, record)

    async def put_many(self, records: Sequence[StoredRubric]) -> int:
        return await self._run(_put_many, list(records))

    async def scan(self, *, after_key: str | None, limit: int) -> list[StoredRubric]:
        return await self._run(_scan, after_key or "", limit)

    async def count(self) -> int:
        return await self._run(_count)

    @asynccontextmanager
    async def generation_lock(self, key: str, *, timeout: float | None = None) -> AsyncIterator[None]:
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".lock"
        fd = await _flock(self.lock_dir / name, timeout=timeout)
        try:
            yield
        finally:
            _release(self.lock_dir / name, fd)

    async def aclose(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._closed = True
        self._executor.shutdown(wait=False)


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: autocommit; put_many opens its own transaction.
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        deadline = time.monotonic() + busy_timeout_s
        while True:  # switching a fresh file to WAL can race another process doing the same
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if mode.lower() != "wal":
            raise RuntimeError(
                f"{path}: SQLite refused WAL mode (got {mode!r}); is it on a network filesystem?"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _row(record: StoredRubric) -> tuple[str, str, str, str]:
    return (record.key, record.rubric_id, record.created_at.isoformat(), record.model_dump_json())


def _select_one(conn: sqlite3.Connection, column: str, value: str) -> StoredRubric | None:
    row = conn.execute(f"SELECT record FROM rubrics WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else StoredRubric.model_validate_json(row[0])


def _put(conn: sqlite3.Connection, record: StoredRubric) -> StoredRubric:
    conn.execute(_INSERT, _row(record))
    stored = _select_one(conn, "key", record.key)
    if stored is None:
        raise RuntimeError(f"rubric {record.key} vanished right after its insert")
    return stored


def _put_many(conn: sqlite3.Connection, records: list[StoredRubric]) -> int:
    rows = [_row(record) for record in records]
    before = conn.total_changes
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn.total_changes - before


def _scan(conn: sqlite3.Connection, after_key: str, limit: int) -> list[StoredRubric]:
    rows = conn.execute("SELECT record FROM rubrics WHERE key > ? ORDER BY key LIMIT ?", (after_key, limit))
    return [StoredRubric.model_validate_json(row[0]) for row in rows]


def _count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM rubrics").fetchone()[0]


async def _flock(path: Path, *, timeout: float | None) -> int:
    """An fd holding an exclusive flock on the file now at `path` (polling: a blocked flock in a thread
    could not be cancelled). Each call is a few local syscalls, cheap enough for the event loop."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay, max_delay = LOCK_POLL_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
        else:
            # The releaser unlinks the file while holding it: if we locked an unlinked (or replaced)
            # file, another task may hold the new one, so try again.
            if _same_file(fd, path):
                return fd
            os.close(fd)
            continue
        if deadline is not None and time.monotonic() >= deadline:
            raise GenerationLockTimeout(f"generation lock {path.name} still held after {timeout}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _release(path: Path, fd: int) -> None:
    # Unlink before unlocking so lock files do not pile up; waiters then re-check with `_same_file`.
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # drops the flock
