"""Trace stores: round trip, filters, pagination, idempotent upserts and migrations."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.storage.migrations import migrate_sqlite
from extproc.storage.model import SpanRecord, StoredFinding, security_score
from extproc.storage.stores import (
    MemoryTraceStore,
    ModelUsage,
    SpanQuery,
    SpanStats,
    SqliteTraceStore,
    Totals,
    TraceStore,
)

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
    assert migrate_sqlite(conn) == ["001_traces.sql", "002_metadata.sql", "003_query_indexes.sql"]
    assert migrate_sqlite(conn) == []
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"traces", "spans", "findings", "schema_migrations"} <= tables


def test_purge_removes_only_old_traces(store: TraceStore) -> None:
    store.write([span(n, findings=(EMAIL,)) for n in range(10)])
    assert store.purge(1005.0) == 5
    assert sorted(s.trace_id for s in store.query(SpanQuery())) == [
        f"trace{n}" for n in range(5, 10)
    ]


# -- the admin API's queries: more filters, counts, finding rows, aggregates -------------------
SECRET = StoredFinding("aws_key", "secret", 4, 1.0, "response:output:3-23", "sec.aws", "regex")


def usage(
    n: int,
    *,
    tenant: str = "t1",
    agent: str | None = "a",
    decision: str = "allowed",
    model: str | None = "gpt-4o",
    operation: str = "chat_completion",
    tokens: tuple[int | None, int | None] = (3, 5),
    cost: float | None = None,
    latency: float | None = None,
    ip: str | None = None,
    findings: tuple[StoredFinding, ...] = (),
    at: float | None = None,
) -> SpanRecord:
    """A span with the fields the aggregates read."""
    return SpanRecord(
        trace_id=f"trace{n}",
        span_id=f"trace{n}",
        tenant_id=tenant,
        agent_id=agent,
        created_at=1000.0 + n if at is None else at,
        operation_name=operation,
        decision=decision,
        security_score=security_score(findings),
        model_name=model,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        estimated_cost_usd=cost,
        latency_ms=latency,
        source_ip=ip,
        findings=findings,
    )


AGGREGATE_FIXTURE = [
    usage(1, cost=0.25, latency=100.0, ip="10.0.0.1", tokens=(10, 20)),
    usage(2, decision="blocked", cost=None, latency=5.0, ip="10.0.0.2", findings=(INJECTION,)),
    usage(3, agent="b", decision="flagged", model="claude", operation="messages", cost=0.5,
          latency=300.0, ip="10.0.0.2", tokens=(100, 50), findings=(EMAIL,)),
    usage(4, agent="b", decision="redacted", cost=0.125, latency=200.0, ip="10.0.0.3",
          tokens=(1, 1), findings=(EMAIL, SECRET)),
    usage(5, decision="rate_limited", model=None, tokens=(None, None), ip="10.0.0.9"),
    usage(6, tenant="t2", decision="blocked", model="gpt-4o-mini", cost=0.0625, latency=40.0,
          ip="10.0.0.2", tokens=(2, 0), findings=(INJECTION,)),
]  # fmt: skip


def ids(spans: list[SpanRecord]) -> list[str]:
    return [s.trace_id for s in spans]


def test_new_filters_agree_with_count(store: TraceStore) -> None:
    store.write(AGGREGATE_FIXTURE)
    cases = {
        SpanQuery(agent_id="b"): ["trace4", "trace3"],
        SpanQuery(model="claude"): ["trace3"],
        SpanQuery(operation_name="messages"): ["trace3"],
        SpanQuery(span_id="trace2"): ["trace2"],
        SpanQuery(category="pii"): ["trace4", "trace3"],
        SpanQuery(category="pii", min_severity=3): [],  # one finding must match both
        SpanQuery(min_security_score=60): ["trace6", "trace4", "trace2"],
        SpanQuery(tenant_id="t1", decision="blocked"): ["trace2"],
        SpanQuery(tenant_id="t1", agent_id="a", since=1002, until=1006): ["trace5", "trace2"],
        SpanQuery(): ["trace6", "trace5", "trace4", "trace3", "trace2", "trace1"],
    }
    for query, expected in cases.items():
        assert ids(store.query(query)) == expected, query
        assert store.count(query) == len(expected), query
    assert store.count(SpanQuery(tenant_id="t1", limit=1, offset=3)) == 5  # pagination ignored


def test_ties_on_created_at_page_without_overlap(store: TraceStore) -> None:
    store.write([usage(n, at=5000.0) for n in range(7)])
    pages = [ids(store.query(SpanQuery(limit=3, offset=o))) for o in (0, 3, 6)]
    assert pages == [["trace6", "trace5", "trace4"], ["trace3", "trace2", "trace1"], ["trace0"]]


def test_finding_rows_filter_per_finding(store: TraceStore) -> None:
    store.write(AGGREGATE_FIXTURE)
    rows = store.findings(SpanQuery(tenant_id="t1"))
    assert [(r.trace_id, r.idx, r.finding) for r in rows] == [
        ("trace4", 0, EMAIL),
        ("trace4", 1, SECRET),
        ("trace3", 0, EMAIL),
        ("trace2", 0, INJECTION),
    ]
    assert (rows[0].tenant_id, rows[0].agent_id, rows[0].decision) == ("t1", "b", "redacted")
    assert rows[0].created_at == 1004.0 and rows[0].span_id == "trace4"
    assert store.count_findings(SpanQuery(tenant_id="t1")) == 4
    high = store.findings(SpanQuery(min_severity=3))
    assert [(r.trace_id, r.finding.type) for r in high] == [
        ("trace6", "prompt_injection"),
        ("trace4", "aws_key"),
        ("trace2", "prompt_injection"),
    ]
    assert store.count_findings(SpanQuery(min_severity=3)) == 3
    pii = SpanQuery(category="pii", limit=1, offset=1)
    assert [r.trace_id for r in store.findings(pii)] == ["trace3"]
    assert store.count_findings(pii) == 2
    assert store.count_findings(SpanQuery(agent_id="b", finding_type="email")) == 2
    assert store.findings(SpanQuery(tenant_id="t1", until=1002)) == []


def test_totals_and_stats_are_exact(store: TraceStore) -> None:
    store.write(AGGREGATE_FIXTURE)
    t1 = SpanQuery(tenant_id="t1")
    assert store.totals(t1) == Totals(5, 114, 76, 0.875)
    stats = store.stats(t1)
    assert stats.totals == store.totals(t1)
    assert stats.by_decision == {
        "allowed": 1,
        "blocked": 1,
        "flagged": 1,
        "redacted": 1,
        "rate_limited": 1,
    }
    assert stats.blocked == 2  # blocked + rate_limited
    assert stats.findings_by_type == {"prompt_injection": 1, "email": 2, "aws_key": 1}
    # Latencies 5, 100, 200, 300: nearest rank 2 and 4.
    assert (stats.latency_p50_ms, stats.latency_p95_ms) == (100.0, 300.0)
    assert stats.models == [
        ModelUsage("gpt-4o", 3, 14, 26, 0.375),
        ModelUsage("claude", 1, 100, 50, 0.5),
        ModelUsage(None, 1, 0, 0, 0.0),
    ]
    assert stats.source_ips == [("10.0.0.2", 2), ("10.0.0.9", 1)]  # not 10.0.0.3 (redacted)
    assert stats.by_tenant == [("t1", 5)]
    assert store.stats(t1, top=1).models == [ModelUsage("gpt-4o", 3, 14, 26, 0.375)]

    every = store.stats(SpanQuery())
    assert every.by_tenant == [("t1", 5), ("t2", 1)]
    assert every.source_ips[0] == ("10.0.0.2", 3)
    assert every.totals.requests == 6 and every.totals.cost_usd == 0.9375
    assert store.stats(SpanQuery(agent_id="b")).totals == Totals(2, 101, 51, 0.625)


def test_stats_of_nothing(store: TraceStore) -> None:
    assert store.stats(SpanQuery()) == SpanStats()
    assert store.totals(SpanQuery(tenant_id="t1")) == Totals()


@pytest.mark.parametrize(
    ("latencies", "p50", "p95"),
    [([7.0], 7.0, 7.0), ([float(n) for n in range(20, 0, -1)], 10.0, 19.0), ([1.0, 2.0], 1.0, 2.0)],
)
def test_latency_percentiles_are_nearest_rank(
    store: TraceStore, latencies: list[float], p50: float, p95: float
) -> None:
    store.write([usage(n, latency=value) for n, value in enumerate(latencies)] + [usage(99)])
    stats = store.stats(SpanQuery())
    assert (stats.latency_p50_ms, stats.latency_p95_ms) == (p50, p95)


def test_sqlite_reads_while_another_thread_writes(tmp_path: Path) -> None:
    sqlite_store = SqliteTraceStore(tmp_path / "c.db")
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                spans = sqlite_store.query(SpanQuery(limit=1000))
                # Each read is one snapshot: a page's spans always carry their findings.
                assert all(len(s.findings) == 1 for s in spans)
                sqlite_store.count(SpanQuery())
                sqlite_store.stats(SpanQuery())
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for batch in range(30):
        sqlite_store.write([usage(batch * 10 + i, findings=(EMAIL,)) for i in range(10)])
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    assert sqlite_store.count(SpanQuery()) == 300
    sqlite_store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        sqlite_store.query(SpanQuery())
