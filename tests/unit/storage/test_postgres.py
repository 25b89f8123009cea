"""PostgreSQL trace store against a real server: upserts, filters, migrations, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

from extproc.storage.model import SpanRecord
from extproc.storage.postgres import PostgresTraceStore, migrate_postgres
from extproc.storage.stores import SpanQuery
from tests.unit.storage.pg import ALL_MIGRATIONS, sql
from tests.unit.storage.test_stores import EMAIL, INJECTION, span


# CI starts a server here; point elsewhere with EXTPROC_TEST_POSTGRES.
@pytest.fixture(scope="session")
def dsn(new_database: Callable[[], str]) -> str:
    return new_database()


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresTraceStore]:
    opened = PostgresTraceStore(dsn)
    sql(dsn, "TRUNCATE traces, spans, findings")
    yield opened
    opened.close()


def count(dsn: str, table: str) -> int:
    return int(sql(dsn, f"SELECT count(*) FROM {table}")[0][0])


def test_round_trip_and_idempotent_upsert(store: PostgresTraceStore, dsn: str) -> None:
    record = span(1, findings=(EMAIL, INJECTION))
    store.write([record])
    store.write([record])  # a replayed batch
    assert store.query(SpanQuery(trace_id="trace1")) == [record]
    assert (count(dsn, "traces"), count(dsn, "spans"), count(dsn, "findings")) == (1, 1, 2)


def test_upsert_replaces_every_column_and_the_findings(store: PostgresTraceStore) -> None:
    store.write([span(1, findings=(EMAIL, INJECTION))])
    changed = span(2, decision="blocked", findings=(INJECTION,))
    changed = SpanRecord(**{**_fields(changed), "trace_id": "trace1", "span_id": "trace1"})
    store.write([changed])
    (stored,) = store.query(SpanQuery())
    assert stored.decision == "blocked"
    assert stored.prompt == "user: hi 2"
    assert stored.findings == (INJECTION,)


def test_a_span_twice_in_one_batch_keeps_the_last(store: PostgresTraceStore) -> None:
    first = span(1, findings=(EMAIL,))
    last = SpanRecord(**{**_fields(first), "decision": "blocked", "findings": (INJECTION,)})
    store.write([first, span(2), last])
    assert store.query(SpanQuery(trace_id="trace1")) == [last]


def test_a_batch_of_two_hundred(store: PostgresTraceStore, dsn: str) -> None:
    batch = [span(n, findings=(EMAIL, INJECTION) if n % 3 == 0 else ()) for n in range(200)]
    store.write(batch)
    store.write(batch)
    assert (count(dsn, "spans"), count(dsn, "findings")) == (200, 2 * 67)
    assert store.query(SpanQuery(limit=1000)) == sorted(
        batch, key=lambda s: s.created_at, reverse=True
    )


def test_migrations_apply_once(new_database: Callable[[], str]) -> None:
    fresh = new_database()
    first = PostgresTraceStore(fresh)
    first.close()
    again = PostgresTraceStore(fresh)
    again.close()
    assert (first.applied, again.applied) == (ALL_MIGRATIONS, [])
    tables = {
        r[0] for r in sql(fresh, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"traces", "spans", "findings", "schema_migrations"} <= tables


def test_concurrent_migrations_apply_once(new_database: Callable[[], str]) -> None:
    fresh = new_database()

    async def both() -> list[list[str]]:
        conns = [await asyncpg.connect(fresh) for _ in range(2)]
        try:
            return list(await asyncio.gather(*(migrate_postgres(c) for c in conns)))
        finally:
            for c in conns:
                await c.close()

    assert sorted(asyncio.run(both())) == [[], ALL_MIGRATIONS]
    assert count(fresh, "schema_migrations") == len(ALL_MIGRATIONS)


def test_reconnects_after_the_backend_is_killed(store: PostgresTraceStore, dsn: str) -> None:
    store.write([span(1)])
    database = dsn.rsplit("/", 1)[1]
    sql(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    # The kept connection is dead now: a write may fail once, and the next must succeed.
    with contextlib.suppress(Exception):
        store.write([span(2)])
    store.write([span(2), span(3)])
    assert [s.trace_id for s in store.query(SpanQuery())] == ["trace3", "trace2", "trace1"]
    assert count(dsn, "spans") == 3


def test_a_killed_backend_costs_no_failed_write(store: PostgresTraceStore, dsn: str) -> None:
    store.write([span(1)])
    sql(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        dsn.rsplit("/", 1)[1],
    )
    # Writes are idempotent, so the store retries once on a fresh connection by itself.
    store.write([span(2)])
    assert count(dsn, "spans") == 2


def test_refused_connection_raises_promptly() -> None:
    started = time.monotonic()
    unreachable = PostgresTraceStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2)
    try:
        with pytest.raises(OSError):
            unreachable.write([span(1)])
        with pytest.raises(OSError):
            unreachable.query(SpanQuery())
    finally:
        unreachable.close()
    assert time.monotonic() - started < 10


def test_a_silent_server_times_out() -> None:
    # Accepts the connection and never answers: only the connect timeout can end the wait.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        silent = PostgresTraceStore(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=1)
        try:
            with pytest.raises(TimeoutError):
                silent.write([span(1)])
        finally:
            silent.close()
        assert time.monotonic() - started < 6


def test_a_hung_write_times_out_and_the_next_succeeds(dsn: str) -> None:
    quick = PostgresTraceStore(dsn, command_timeout=1)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        async def run() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE spans IN ACCESS EXCLUSIVE MODE")
                    locked.set()
                    await asyncio.to_thread(release.wait, 30)
            finally:
                await conn.close()

        asyncio.run(run())

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            quick.write([span(50)])
        assert time.monotonic() - started < 5
    finally:
        release.set()
        holder.join()
    quick.write([span(50)])
    assert [s.trace_id for s in quick.query(SpanQuery(trace_id="trace50"))] == ["trace50"]
    quick.close()


def test_closed_store_refuses(dsn: str) -> None:
    closed = PostgresTraceStore(dsn)
    closed.close()
    closed.close()  # twice is harmless
    with pytest.raises(RuntimeError):
        closed.write([span(1)])


def _fields(record: SpanRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in SpanRecord.__dataclass_fields__}


def test_purge(store: PostgresTraceStore) -> None:
    store.write([span(n, findings=(EMAIL,)) for n in range(4)])
    assert store.purge(1002.0) == 2
    assert sorted(s.trace_id for s in store.query(SpanQuery())) == ["trace2", "trace3"]
