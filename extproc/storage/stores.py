"""Trace stores: one small interface, an SQLite implementation and an in-memory one.

Stores are synchronous and called from the writer's thread (and, later, the admin API's);
the request path never touches them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from extproc.storage.migrations import migrate_sqlite
from extproc.storage.model import SpanRecord, StoredFinding


@dataclass(frozen=True, slots=True)
class SpanQuery:
    """Filters for listing spans; every field optional, newest first."""

    tenant_id: str | None = None
    trace_id: str | None = None
    since: float | None = None
    until: float | None = None
    finding_type: str | None = None
    min_severity: int | None = None
    decision: str | None = None
    limit: int = 50
    offset: int = 0


class TraceStore(Protocol):
    """Where spans are persisted."""

    def write(self, spans: Sequence[SpanRecord]) -> None:
        """Insert or replace (by span id): replaying a batch twice stores it once."""
        ...

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        """Spans matching every given filter, newest first, paginated."""
        ...

    def purge(self, before: float) -> int:
        """Delete traces created before `before` (unix seconds); returns how many."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _matches(span: SpanRecord, q: SpanQuery) -> bool:
    if q.tenant_id is not None and span.tenant_id != q.tenant_id:
        return False
    if q.trace_id is not None and span.trace_id != q.trace_id:
        return False
    if q.since is not None and span.created_at < q.since:
        return False
    if q.until is not None and span.created_at >= q.until:
        return False
    if q.decision is not None and span.decision != q.decision:
        return False
    wanted = [
        f
        for f in span.findings
        if (q.finding_type is None or f.type == q.finding_type)
        and (q.min_severity is None or f.severity >= q.min_severity)
    ]
    return bool(wanted) or (q.finding_type is None and q.min_severity is None)


class MemoryTraceStore:
    """The `memory` profile: a dict, lost on restart."""

    def __init__(self) -> None:
        self._spans: dict[str, SpanRecord] = {}
        self._lock = threading.Lock()

    def write(self, spans: Sequence[SpanRecord]) -> None:
        """Insert or replace by span id."""
        with self._lock:
            for span in spans:
                self._spans[span.span_id] = span

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        """Filter, newest first, paginate."""
        with self._lock:
            found = [s for s in self._spans.values() if _matches(s, query)]
        found.sort(key=lambda s: s.created_at, reverse=True)
        return found[query.offset : query.offset + query.limit]

    def purge(self, before: float) -> int:
        """Delete spans created before `before`."""
        with self._lock:
            old = [k for k, v in self._spans.items() if v.created_at < before]
            for key in old:
                del self._spans[key]
        return len(old)

    def close(self) -> None:
        """Nothing to release."""


_SPAN_COLUMNS = (
    "span_id",
    "trace_id",
    "tenant_id",
    "model_name",
    "operation_name",
    "dialect",
    "prompt",
    "response",
    "status_code",
    "security_score",
    "decision",
    "prompt_tokens",
    "completion_tokens",
    "usage_source",
    "ttft_ms",
    "latency_ms",
    "estimated_cost_usd",
    "source_ip",
    "created_at",
)


def span_rows(spans: Sequence[SpanRecord]) -> list[tuple[Any, ...]]:
    """Span column values in `_SPAN_COLUMNS` order, for either database."""
    return [tuple(getattr(s, c) for c in _SPAN_COLUMNS) for s in spans]


def finding_rows(spans: Sequence[SpanRecord]) -> list[tuple[Any, ...]]:
    """(span_id, idx, type, category, severity, confidence, location, rule_id, detector)."""
    return [
        (
            s.span_id,
            i,
            f.type,
            f.category,
            f.severity,
            f.confidence,
            f.location,
            f.rule_id,
            f.detector,
        )
        for s in spans
        for i, f in enumerate(s.findings)
    ]


def span_select(query: SpanQuery, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The SELECT for a SpanQuery and its arguments; `placeholder(n)` spells argument n (1-based).

    Shared by SQLite (`?`) and PostgreSQL (`$n`): both return spans joined with their trace's
    agent id, newest first.
    """
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return placeholder(len(args))

    for column, op, value in (
        ("s.tenant_id", "=", query.tenant_id),
        ("s.trace_id", "=", query.trace_id),
        ("s.created_at", ">=", query.since),
        ("s.created_at", "<", query.until),
        ("s.decision", "=", query.decision),
    ):
        if value is not None:
            where.append(f"{column} {op} {arg(value)}")
    if query.finding_type is not None or query.min_severity is not None:
        sub = ["f.span_id = s.span_id"]
        if query.finding_type is not None:
            sub.append(f"f.type = {arg(query.finding_type)}")
        if query.min_severity is not None:
            sub.append(f"f.severity >= {arg(query.min_severity)}")
        where.append(f"EXISTS (SELECT 1 FROM findings f WHERE {' AND '.join(sub)})")
    sql = (
        f"SELECT s.{', s.'.join(_SPAN_COLUMNS)}, t.agent_id FROM spans s "
        "JOIN traces t ON t.trace_id = s.trace_id"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY s.created_at DESC LIMIT {arg(query.limit)} OFFSET {arg(query.offset)}"
    )
    return sql, args


class SqliteTraceStore:
    """The `lite` profile: one SQLite file (WAL mode), migrated on open if asked."""

    def __init__(self, path: Path | str, *, migrate: bool = True) -> None:
        # Worker processes share the file: wait for its lock rather than fail.
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self.applied = migrate_sqlite(self._conn) if migrate else []

    def write(self, spans: Sequence[SpanRecord]) -> None:
        """One transaction per batch; upserts make a replayed batch harmless."""
        if not spans:
            return
        marks = ",".join("?" * len(_SPAN_COLUMNS))
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    "INSERT INTO traces (trace_id, tenant_id, agent_id, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (trace_id) DO NOTHING",
                    [(s.trace_id, s.tenant_id, s.agent_id, s.created_at) for s in spans],
                )
                conn.executemany(
                    f"INSERT OR REPLACE INTO spans ({','.join(_SPAN_COLUMNS)}) VALUES ({marks})",
                    span_rows(spans),
                )
                conn.executemany(
                    "DELETE FROM findings WHERE span_id = ?", [(s.span_id,) for s in spans]
                )
                conn.executemany(
                    "INSERT INTO findings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    finding_rows(spans),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        """Filter in SQL, newest first, paginate."""
        sql, args = span_select(query, lambda n: "?")
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
            spans = [self._span(row) for row in rows]
        return spans

    def _span(self, row: tuple[Any, ...]) -> SpanRecord:
        values = dict(zip(_SPAN_COLUMNS, row, strict=False))
        values["agent_id"] = row[-1]
        findings = tuple(
            StoredFinding(*f)
            for f in self._conn.execute(
                "SELECT type, category, severity, confidence, location, rule_id, detector "
                "FROM findings WHERE span_id = ? ORDER BY idx",
                (values["span_id"],),
            )
        )
        return SpanRecord(**values, findings=findings)

    def purge(self, before: float) -> int:
        """Delete traces created before `before`; spans and findings cascade."""
        with self._lock:
            cursor = self._conn.execute("DELETE FROM traces WHERE created_at < ?", (before,))
            return cursor.rowcount

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
