"""Trace stores: round trip, filters, pagination, idempotent upserts and migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.storage.migrations import migrate_sqlite
from extproc.storage.model import SpanRecord, StoredFinding, security_score
from extproc.storage.stores import MemoryTraceStore, SpanQuery, SqliteTraceStore, TraceStore

EMAIL = StoredFinding(
    "email", "pii", 2, 0.9, "request:messages[0].content:5-20", "pii.email", "regex"
)
INJECTION = StoredFinding(
    "prompt_injection",
    "prompt_injection",
    3,
    0.9,
    "request:messages[0].content:0-28",
    "inj.x",
    "regex",
)


def span(
    n: int, tenant: str = "t1", decision: str = "allowed", findings: tuple[StoredFinding, ...] = ()
) -> SpanRecord:
    return SpanRecord(
        trace_id=f"trace{n}",
        span_id=f"trace{n}",
        tenant_id=tenant,
        agent_id="a",
        created_at=1000.0 + n,
        operation_name="chat_completion",
        decision=decision,
        security_score=security_score(findings),
        model_name="gpt-4o",
        prompt=f"user: hi {n}",
        status_code=200,
        prompt_tokens=3,
        completion_tokens=5,
        findings=findings,
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TraceStore]:
    """Every backend, so each one is held to the same assertions."""
    if request.param == "memory":
        yield MemoryTraceStore()
        return
    if request.param == "sqlite":
        opened: TraceStore = SqliteTraceStore(tmp_path / "t.db")
    else:
        from extproc.storage.postgres import PostgresTraceStore

        opened = PostgresTraceStore(request.getfixturevalue("new_database")())
    yield opened
    opened.close()


def test_round_trip_and_idempotent_upsert(store: TraceStore) -> None:
    record = span(1, findings=(EMAIL, INJECTION))
    store.write([record])
    store.write([record])  # a replayed batch
    assert store.query(SpanQuery(trace_id="trace1")) == [record]
    assert record.security_score == 68  # high (75) x 0.9


def test_filters_and_pagination(store: TraceStore) -> None:
    store.write([span(n, tenant="t1" if n % 2 else "t2") for n in range(10)])
    store.write([span(20, decision="blocked", findings=(INJECTION,)), span(21, findings=(EMAIL,))])
    t1 = store.query(SpanQuery(tenant_id="t1", limit=3))
    assert [s.trace_id for s in t1] == ["trace21", "trace20", "trace9"]
    page2 = store.query(SpanQuery(tenant_id="t1", limit=3, offset=3))
    assert [s.trace_id for s in page2] == ["trace7", "trace5", "trace3"]
    assert [s.trace_id for s in store.query(SpanQuery(decision="blocked"))] == ["trace20"]
    assert [s.trace_id for s in store.query(SpanQuery(finding_type="email"))] == ["trace21"]
    assert [s.trace_id for s in store.query(SpanQuery(min_severity=3))] == ["trace20"]
    assert store.query(SpanQuery(finding_type="email", min_severity=3)) == []
    window = store.query(SpanQuery(since=1002, until=1005))
    assert [s.trace_id for s in window] == ["trace4", "trace3", "trace2"]


def test_migrations_apply_once(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert migrate_sqlite(conn) == ["001_traces.sql", "002_metadata.sql"]
    assert migrate_sqlite(conn) == []
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"traces", "spans", "findings", "schema_migrations"} <= tables


def test_purge_removes_only_old_traces(store: TraceStore) -> None:
    store.write([span(n, findings=(EMAIL,)) for n in range(10)])
    assert store.purge(1005.0) == 5
    assert sorted(s.trace_id for s in store.query(SpanQuery())) == [
        f"trace{n}" for n in range(5, 10)
    ]
