"""`RubricStore` on PostgreSQL (psycopg 3, async): for service replicas on one or several hosts.

Records live in one table (created if missing), the full record as jsonb next to its key and id.
Queries run on an `AsyncConnectionPool` in autocommit mode.

The generation locks are session-level advisory locks, all held on ONE connection per store (the
"lock session"): a 64-question batch from 8 concurrent clients holds up to 512 locks with one
connection, not 512 (a server's default `max_connections` is 100). Why an advisory lock rather than a
lease table: it dies with its session — a killed holder's socket is closed by the kernel, the server
ends the session and the next waiter gets the lock at once; no lease length to tune, no renewal task
that could stall under load and let two holders overlap, no clock comparisons between hosts.
When the holder's whole host vanishes (no FIN is ever sent), the server notices through TCP keepalives,
which the lock connection sets short (`tcp_keepalives_*`, `tcp_user_timeout`): about a minute.

One session holds many locks, so waiting cannot block it: a waiter tries `pg_try_advisory_lock` with a
growing pause between tries (`LOCK_POLL_S`), and tasks of one process queue on an in-process lock per
key first (a session re-enters its own advisory locks, so the server alone would let them overlap).
Taking and releasing run shielded from cancellation, so a cancelled request never leaves a lock held
by the session; should an unlock fail, the session is closed, which releases everything it held.
A session that breaks loses its locks while their holders still generate: a duplicate generation is
then possible, and harmless, since `put` keeps the first record.
Connections per process: the pool's `max_size` plus one. Needs real sessions — not a
transaction-pooling pgbouncer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from rcsd.services.rubric.store import GenerationLockTimeout, RubricStore, StoredRubric

DEFAULT_POOL_SIZE = (1, 8)
DEFAULT_TIMEOUT_S = 30.0
LOCK_POLL_S = (0.02, 0.5)  # first and longest pause between tries of a lock another session holds
# Both ends watch the lock connection: the client (libpq) and the server (session settings).
_CLIENT_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "20",
    "keepalives_interval": "5",
    "keepalives_count": "4",
    "connect_timeout": "10",
}
_SERVER_KEEPALIVES = "-c tcp_keepalives_idle=20 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4 -c tcp_user_timeout=40000"
_DDL_LOCK = (0x72637364, 1)  # ("rcsd", 1): two-int advisory locks never collide with the keys' bigint ones

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rubrics (
    key text PRIMARY KEY,
    rubric_id text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    record jsonb NOT NULL
)
"""


class PostgresRubricStore(RubricStore):
    """Build with `await PostgresRubricStore.open(url)` (or `open_store("postgresql://...")`)."""

    def __init__(self, conninfo: str, pool: AsyncConnectionPool) -> None:
        self._conninfo = conninfo
        self._pool = pool
        self._lock_session: psycopg.AsyncConnection | None = None
        self._opening = asyncio.Lock()
        self._local: dict[int, _LocalLock] = {}

    @classmethod
    async def open(
        cls, url: str, *, pool_size: tuple[int, int] = DEFAULT_POOL_SIZE, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> PostgresRubricStore:
        conninfo = _with_defaults(url, _CLIENT_KEEPALIVES)
        min_size, max_size = pool_size
        pool = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            timeout=timeout_s,
            name="rubric-store",
            open=False,
        )
        await pool.open(wait=True, timeout=timeout_s)
        try:
            async with pool.connection() as conn, conn.transaction():
                # Two processes creating the table at once can both fail the catalog's unique check.
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _DDL_LOCK)
                await conn.execute(_SCHEMA)
        except BaseException:
            await pool.close()
            raise
        return cls(conninfo, pool)

    async def _fetch_records(self, query: str, params: Sequence[Any]) -> list[StoredRubric]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return [StoredRubric.model_validate(row[0]) for row in await cur.fetchall()]

    async def get(self, key: str) -> StoredRubric | None:
        found = await self._fetch_records("SELECT record FROM rubrics WHERE key = %s", (key,))
        return found[0] if found else None

    async def get_by_id(self, rubric_id: str) -> StoredRubric | None:
        found = await self._fetch_records("SELECT record FROM rubrics WHERE rubric_id = %s", (rubric_id,))
        return found[0] if found else None

    async def put(self, record: StoredRubric) -> StoredRubric:
        async with self._pool.connection() as conn:
            # Two statements on purpose: a single `INSERT ... ON CONFLICT DO NOTHING` + SELECT would read
            # with one snapshot and miss a row that a concurrent writer committed just before.
            await conn.execute(
                "INSERT INTO rubrics (key, rubric_id, created_at, record) VALUES (%s, %s, %s, %s::jsonb)"
                " ON CONFLICT (key) DO NOTHING",
                (record.key, record.rubric_id, record.created_at, record.model_dump_json()),
            )
            cur = await conn.execute("SELECT record FROM rubrics WHERE key = %s", (record.key,))
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"rubric {record.key} vanished right after its insert")
        return StoredRubric.model_validate(row[0])

    async def put_many(self, records: Sequence[StoredRubric]) -> int:
        if not records:
            return 0
        columns = (
            [r.key for r in records],
            [r.rubric_id for r in records],
            [r.created_at for r in records],
            [r.model_dump_json() for r in records],
        )
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO rubrics (key, rubric_id, created_at, record)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::jsonb[])"
                " ON CONFLICT (key) DO NOTHING",
                columns,
            )
            return cur.rowcount

    async def scan(self, *, after_key: str | None, limit: int) -> list[StoredRubric]:
        return await self._fetch_records(
            "SELECT record FROM rubrics WHERE key > %s ORDER BY key LIMIT %s", (after_key or "", limit)
        )

    async def count(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM rubrics")
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    @asynccontextmanager
    async def generation_lock(self, key: str, *, timeout: float | None = None) -> AsyncIterator[None]:
        lock_id = _advisory_id(key)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        local = self._local.setdefault(lock_id, _LocalLock())
        local.users += 1
        try:
            async with _within(local.lock, deadline, lock_id, timeout):
                session = await self._take(lock_id, deadline, timeout)
                try:
                    yield
                finally:
                    await asyncio.shield(self._release(session, lock_id))
        finally:
            local.users -= 1
            if not local.users:
                del self._local[lock_id]

    async def _take(
        self, lock_id: int, deadline: float | None, timeout: float | None
    ) -> psycopg.AsyncConnection:
        """The lock session, once it holds `lock_id` (another session may hold it: try again later)."""
        loop = asyncio.get_running_loop()
        delay, max_delay = LOCK_POLL_S
        while True:
            attempt = asyncio.ensure_future(self._try_lock(lock_id))
            try:
                session = await asyncio.shield(attempt)
            except asyncio.CancelledError:  # the try runs on and may take the lock: give it back then
                attempt.add_done_callback(partial(self._give_back, lock_id))
                raise
            if session is not None:
                return session
            if deadline is not None and loop.time() + delay > deadline:
                raise _timed_out(lock_id, timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def _try_lock(self, lock_id: int) -> psycopg.AsyncConnection | None:
        session = await self._session()
        cur = await session.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,))
        row = await cur.fetchone()
        return session if row is not None and row[0] else None

    def _give_back(self, lock_id: int, attempt: asyncio.Future[psycopg.AsyncConnection | None]) -> None:
        if not attempt.cancelled() and attempt.exception() is None and (session := attempt.result()):
            asyncio.ensure_future(self._release(session, lock_id))

    async def _release(self, session: psycopg.AsyncConnection, lock_id: int) -> None:
        if session is not self._lock_session or session.closed:
            return  # that session is gone, and the server released its locks with it
        try:
            await session.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        except psycopg.Error:
            await session.close()  # never leave a lock held: closing releases all of the session's

    async def _session(self) -> psycopg.AsyncConnection:
        """The lock session, (re)opened when missing or broken."""
        async with self._opening:
            if self._lock_session is None or self._lock_session.closed:
                self._lock_session = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name="rcsd-rubric-lock",
                    options=self._lock_options(),
                )
            return self._lock_session

    def _lock_options(self) -> str:
        given = conninfo_to_dict(self._conninfo).get("options")
        return f"{given} {_SERVER_KEEPALIVES}" if given else _SERVER_KEEPALIVES

    async def aclose(self) -> None:
        if self._lock_session is not None:
            await self._lock_session.close()
        await self._pool.close()


class _LocalLock:
    """Tasks of this process waiting for, or holding, one key's lock."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@asynccontextmanager
async def _within(
    lock: asyncio.Lock, deadline: float | None, lock_id: int, timeout: float | None
) -> AsyncIterator[None]:
    """Hold an in-process lock, waiting until `deadline` at most."""
    remaining = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        await asyncio.wait_for(lock.acquire(), remaining)
    except asyncio.TimeoutError as exc:
        raise _timed_out(lock_id, timeout) from exc
    try:
        yield
    finally:
        lock.release()


def _advisory_id(key: str) -> int:
    """The key's advisory lock: 64 bits of its hash (a collision only makes two keys take turns)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big", signed=True)


def _with_defaults(url: str, defaults: dict[str, str]) -> str:
    """`url` with each of `defaults` added unless the URL sets it already."""
    given = conninfo_to_dict(url)
    return make_conninfo(url, **{name: value for name, value in defaults.items() if name not in given})


def _timed_out(lock_id: int, timeout: float | None) -> GenerationLockTimeout:
    return GenerationLockTimeout(f"generation lock {lock_id} still held after {timeout}s")
