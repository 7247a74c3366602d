"""`RubricStore` on PostgreSQL (psycopg 3, async): for service replicas on one or several hosts.

Records live in one table (created if missing), the full record as jsonb next to its key and id.
Queries run on an `AsyncConnectionPool` in autocommit mode.

The generation lock is a session-level `pg_advisory_lock` held on a connection of its own, opened for
the lock and closed to release it. Why an advisory lock rather than a lease table:
- it dies with its session: a killed holder's socket is closed by the kernel, the server ends the
  session and the next waiter gets the lock at once — no lease length to tune, no renewal task that
  could stall under load and let two holders overlap, no clock comparisons between hosts;
- waiters queue inside the server instead of polling a table.
When the holder's whole host vanishes (no FIN is ever sent), the server notices through TCP keepalives,
which the lock connection sets short (`tcp_keepalives_*`, `tcp_user_timeout`): about a minute.
Costs: one connection per held or waited-for lock (bounded by concurrent generations; size
`max_connections` for it), and it needs real sessions — not a transaction-pooling pgbouncer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from rcsd.services.rubric.store import GenerationLockTimeout, RubricStore, StoredRubric

DEFAULT_POOL_SIZE = (1, 8)
DEFAULT_TIMEOUT_S = 30.0
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
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, application_name="rcsd-rubric-lock", options=self._lock_options()
        )
        try:  # closing the connection is what releases the lock, whatever happens inside
            try:
                # On timeout psycopg cancels the waiting query in the server before raising.
                await asyncio.wait_for(conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,)), timeout)
            except asyncio.TimeoutError as exc:
                raise GenerationLockTimeout(f"generation lock {lock_id} still held after {timeout}s") from exc
            yield
        finally:
            await conn.close()

    def _lock_options(self) -> str:
        given = conninfo_to_dict(self._conninfo).get("options")
        return f"{given} {_SERVER_KEEPALIVES}" if given else _SERVER_KEEPALIVES

    async def aclose(self) -> None:
        await self._pool.close()


def _advisory_id(key: str) -> int:
    """The key's advisory lock: 64 bits of its hash (a collision only makes two keys take turns)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big", signed=True)


def _with_defaults(url: str, defaults: dict[str, str]) -> str:
    """`url` with each of `defaults` added unless the URL sets it already."""
    given = conninfo_to_dict(url)
    return make_conninfo(url, **{name: value for name, value in defaults.items() if name not in given})
