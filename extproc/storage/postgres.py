"""The PostgreSQL trace store: asyncpg on a private event loop behind the synchronous interface.

The writer's thread (and now and then the admin API's) calls in synchronously, so the store
runs its own event loop in a daemon thread and hands coroutines to it one at a time. One
connection is kept; after any failure it is thrown away and the next call opens a new one,
so a restarted database costs one failed batch at most (the writer spills and replays it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson

from extproc.storage.migrations import migration_files
from extproc.storage.model import SpanRecord, StoredFinding
from extproc.storage.stores import (
    _FINDING_FIELDS,
    _SPAN_COLUMNS,
    FindingRow,
    SpanQuery,
    SpanStats,
    Statement,
    Totals,
    finding_count,
    finding_from_row,
    finding_rows,
    finding_select,
    span_count,
    span_rows,
    span_select,
    stats_from_rows,
    stats_statements,
    totals_from_row,
    totals_select,
)

log = logging.getLogger("extproc.storage")

T = TypeVar("T")

# Any 64-bit constant works: it only has to be the same in every process migrating this schema.
_MIGRATION_LOCK = 0x65787470726F63  # "extproc"
# Migrations may wait on another process's lock or rewrite a large table: allow far longer than
# a batch write, but still not forever.
_MIGRATION_TIMEOUT = 300.0

_TRACE_COLUMNS = ("trace_id", "tenant_id", "agent_id", "created_at")
_FINDING_COLUMNS = (
    "span_id",
    "idx",
    "type",
    "category",
    "severity",
    "confidence",
    "location",
    "rule_id",
    "detector",
)

# The connection itself was lost (backend terminated, server restarted, socket reset) rather
# than the statement being refused: a fresh connection may well succeed. asyncpg reports a
# backend killed while the connection sat idle as InternalClientError (its protocol state is
# left mid-operation by the unsolicited FATAL), so that counts too.
_CONNECTION_LOST = (
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)

# Staging tables for COPY: COPY cannot upsert, so rows land here and are merged with one
# INSERT ... SELECT ... ON CONFLICT. ON COMMIT DELETE ROWS empties them after every batch.
_STAGING_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_traces (LIKE traces) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS staged_spans (LIKE spans) ON COMMIT DELETE ROWS;"
)
_MERGE_TRACES = (
    f"INSERT INTO traces ({', '.join(_TRACE_COLUMNS)}) "
    f"SELECT {', '.join(_TRACE_COLUMNS)} FROM staged_traces "
    "ON CONFLICT (trace_id) DO NOTHING"
)
_MERGE_SPANS = (
    f"INSERT INTO spans ({', '.join(_SPAN_COLUMNS)}) "
    f"SELECT {', '.join(_SPAN_COLUMNS)} FROM staged_spans "
    "ON CONFLICT (span_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _SPAN_COLUMNS if c != "span_id")
)


async def migrate_postgres(
    conn: asyncpg.Connection, *, command_timeout: float | None = _MIGRATION_TIMEOUT
) -> list[str]:
    """Apply pending migrations under an advisory lock; returns the names applied."""
    # A session lock, not a transaction one: each file gets its own transaction, and two
    # processes starting together must not both create schema_migrations or apply a file.
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK, timeout=command_timeout)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)",
            timeout=command_timeout,
        )
        done = {
            row[0]
            for row in await conn.fetch(
                "SELECT name FROM schema_migrations", timeout=command_timeout
            )
        }
        applied = []
        for path in migration_files("postgres"):
            if path.name in done:
                continue
            # One transaction per file, recording itself: a failing migration leaves nothing.
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"), timeout=command_timeout)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, extract(epoch FROM now()))",
                    path.name,
                    timeout=command_timeout,
                )
            applied.append(path.name)
        return applied
    finally:
        # A lost connection releases the lock by itself; only unlock on a live one.
        if not conn.is_closed():
            await conn.execute(
                "SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK, timeout=command_timeout
            )


def _dollar(n: int) -> str:
    """PostgreSQL's placeholder for argument n."""
    return f"${n}"


class PostgresTraceStore:
    """PostgreSQL through one asyncpg connection, reopened after any failure."""

    def __init__(
        self,
        dsn: str,
        *,
        migrate: bool = True,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._migrate = migrate
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._conn: asyncpg.Connection | None = None
        self._staged = False
        self._closed = False
        # Calls come from more than one thread; one connection runs one thing at a time.
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="extproc-postgres", daemon=True
        )
        self._thread.start()
        self.applied: list[str] = []
        try:
            self._call(self._connection())
        except (*_CONNECTION_LOST, OSError) as exc:
            # The database being down (or its name not resolving yet) at startup must not stop
            # the server: the writer spills until it is back, and migrations run on the first
            # connection that opens. Anything else (bad credentials, a broken migration) raises.
            log.warning("postgres trace store unreachable at open, will retry: %s", exc)
        except BaseException:
            self.close()
            raise

    # -- the synchronous interface ------------------------------------------------------------
    def write(self, spans: Sequence[SpanRecord]) -> None:
        """One transaction per batch; upserts make a replayed batch harmless."""
        if not spans:
            return
        # ON CONFLICT DO UPDATE refuses to touch one row twice in a statement: keep the last
        # copy of a span, as INSERT OR REPLACE would.
        unique = list({s.span_id: s for s in spans}.values())
        self._call(self._with_connection(lambda conn: self._write(conn, unique)))

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        """Spans matching every given filter, newest first, paginated."""
        return self._call(self._with_connection(lambda conn: self._query(conn, query)))

    def count(self, query: SpanQuery) -> int:
        """How many spans match (limit and offset ignored)."""
        return int(self._fetchrow(span_count(query, _dollar))[0])

    def findings(self, query: SpanQuery) -> list[FindingRow]:
        """Finding rows of matching spans, newest span first, paginated per finding."""
        sql, args = finding_select(query, _dollar)

        async def run(conn: asyncpg.Connection) -> list[FindingRow]:
            return [finding_from_row(tuple(row)) for row in await conn.fetch(sql, *args)]

        return self._call(self._with_connection(run))

    def count_findings(self, query: SpanQuery) -> int:
        """How many finding rows `findings` would list without pagination."""
        return int(self._fetchrow(finding_count(query, _dollar))[0])

    def totals(self, query: SpanQuery) -> Totals:
        """Request count, token and cost sums of matching spans."""
        return totals_from_row(self._fetchrow(totals_select(query, _dollar)))

    def stats(self, query: SpanQuery, *, top: int = 10) -> SpanStats:
        """Aggregates of matching spans: one GROUP BY each, in one read-only snapshot."""
        statements = stats_statements(query, _dollar, top)

        async def run(conn: asyncpg.Connection) -> list[list[tuple[Any, ...]]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return [
                    [tuple(row) for row in await conn.fetch(sql, *args)] for sql, args in statements
                ]

        return stats_from_rows(self._call(self._with_connection(run)))

    def _fetchrow(self, statement: Statement) -> tuple[Any, ...]:
        sql, args = statement

        async def run(conn: asyncpg.Connection) -> tuple[Any, ...]:
            return tuple(await conn.fetchrow(sql, *args))

        return self._call(self._with_connection(run))

    def purge(self, before: float) -> int:
        """Delete traces created before `before` (unix seconds); spans and findings cascade."""

        async def run(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute("DELETE FROM traces WHERE created_at < $1", before)
            return int(status.split()[-1])

        return self._call(self._with_connection(run))

    def close(self) -> None:
        """Close the connection and stop the loop; later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                asyncio.run_coroutine_threadsafe(self._drop(graceful=True), self._loop).result(
                    timeout=self._connect_timeout
                )
            except Exception as exc:  # closing must stop the loop whatever the connection does
                log.debug("postgres trace store: close: %s", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=self._connect_timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("postgres trace store is closed")
            # The deadlines live inside the coroutine (connect and command timeouts), so the
            # wait here ends when they do.
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- on the loop ------------------------------------------------------------------------
    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        conn = await asyncpg.connect(
            self._dsn, timeout=self._connect_timeout, command_timeout=self._command_timeout
        )
        try:
            if self._migrate:
                self.applied = await migrate_postgres(conn)
                # Once is enough: a reconnect must not take the migration lock again.
                self._migrate = False
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._staged = False
        return conn

    async def _drop(self, *, graceful: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        if graceful:
            await conn.close(timeout=self._connect_timeout)
        else:
            # After a failure the connection's state is unknown (mid-transaction, a timed-out
            # command still running): never reuse it, and do not wait on a dead peer.
            conn.terminate()

    async def _with_connection(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            reused = self._conn is not None and not self._conn.is_closed()
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connection()
                # command_timeout bounds each statement; this bounds the whole batch.
                return await asyncio.wait_for(op(conn), timeout=self._command_timeout)
            except Exception as exc:
                # The connection can close under us at any await (the FATAL of a terminated
                # backend arrives whenever it does), whatever error the interrupted call shows.
                lost = not isinstance(exc, TimeoutError) and (
                    isinstance(exc, _CONNECTION_LOST) or (conn is not None and conn.is_closed())
                )
                await self._drop()
                # A kept connection can be dead without knowing it (backend terminated while
                # idle). Both operations are idempotent, so one retry on a fresh connection is
                # safe; a fresh connection failing means the database really is unavailable.
                if not (lost and reused and attempt == 1):
                    raise
                log.info("postgres trace store: connection lost (%r), reconnecting", exc)
            except BaseException:
                await self._drop()
                raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _write(self, conn: asyncpg.Connection, spans: list[SpanRecord]) -> None:
        if not self._staged:
            await conn.execute(_STAGING_SQL)
            self._staged = True
        traces = list(
            {
                s.trace_id: (s.trace_id, s.tenant_id, s.agent_id, s.created_at) for s in spans
            }.values()
        )
        findings = finding_rows(spans)
        async with conn.transaction():
            await conn.copy_records_to_table(
                "staged_traces", records=traces, columns=_TRACE_COLUMNS
            )
            await conn.execute(_MERGE_TRACES)
            await conn.copy_records_to_table(
                "staged_spans",
                records=span_rows(spans),
                columns=_SPAN_COLUMNS,
            )
            await conn.execute(_MERGE_SPANS)
            await conn.execute(
                "DELETE FROM findings WHERE span_id = ANY($1::text[])", [s.span_id for s in spans]
            )
            if findings:
                # Old findings of these spans are gone, so nothing can conflict: COPY directly.
                await conn.copy_records_to_table(
                    "findings", records=findings, columns=_FINDING_COLUMNS
                )

    async def _query(self, conn: asyncpg.Connection, query: SpanQuery) -> list[SpanRecord]:
        sql, args = span_select(query, _dollar)
        # The page and its findings from one snapshot: a span replaced in between would
        # otherwise come back with another version's findings.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(sql, *args)
            if not rows:
                return []
            # One query for the whole page's findings rather than one per span.
            found: dict[str, list[StoredFinding]] = {}
            for f in await conn.fetch(
                f"SELECT span_id, {', '.join(_FINDING_FIELDS)} "
                "FROM findings WHERE span_id = ANY($1::text[]) ORDER BY span_id, idx",
                [row["span_id"] for row in rows],
            ):
                found.setdefault(f["span_id"], []).append(StoredFinding(*tuple(f)[1:]))
        spans = []
        for row in rows:
            values = dict(row)
            spans.append(SpanRecord(**values, findings=tuple(found.get(row["span_id"], ()))))
        return spans


class PostgresMetadataStore(PostgresTraceStore):
    """Metadata documents in PostgreSQL, on the same connection handling as the trace store."""

    def put(
        self, kind: str, id: str, document: dict[str, Any], tenant_id: str | None = None
    ) -> None:
        """Insert or replace."""
        data = orjson.dumps(document).decode()

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO metadata VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT (kind, id) "
                "DO UPDATE SET tenant_id = EXCLUDED.tenant_id, document = EXCLUDED.document, "
                "updated_at = EXCLUDED.updated_at",
                kind,
                id,
                tenant_id,
                data,
                time.time(),
            )

        self._call(self._with_connection(run))

    def get(self, kind: str, id: str) -> dict[str, Any] | None:
        """The document, or None."""

        async def run(conn: asyncpg.Connection) -> Any:
            return await conn.fetchval(
                "SELECT document::text FROM metadata WHERE kind = $1 AND id = $2", kind, id
            )

        found = self._call(self._with_connection(run))
        return orjson.loads(found) if found is not None else None

    def list(self, kind: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""

        async def run(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    "SELECT document::text FROM metadata WHERE kind = $1 "
                    "AND ($2::text IS NULL OR tenant_id = $2) ORDER BY updated_at DESC",
                    kind,
                    tenant_id,
                )
            )

        return [orjson.loads(row[0]) for row in self._call(self._with_connection(run))]

    def delete(self, kind: str, id: str) -> bool:
        """Remove; True if it existed."""

        async def run(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute(
                "DELETE FROM metadata WHERE kind = $1 AND id = $2", kind, id
            )
            return status

        return self._call(self._with_connection(run)).endswith(" 1")
