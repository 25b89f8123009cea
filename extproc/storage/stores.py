"""Trace stores: one small interface, an SQLite implementation and an in-memory one.

Stores are synchronous and called from the writer's thread and from the admin API's thread
pool; the request path never touches them. The SQL (listing, counting, aggregating) is built
once here and shared with the PostgreSQL store, which only spells its placeholders `$n`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from extproc.storage.migrations import migrate_sqlite
from extproc.storage.model import SpanRecord, StoredFinding

# Decisions that refused the request: the policy's block and the gate's refusals.
BLOCKED_DECISIONS: tuple[str, ...] = (
    "blocked",
    "ip_blocked",
    "rate_limited",
    "budget_exceeded",
    "token_cap",
)
# Requests worth a look: whose source IPs `SpanStats.source_ips` ranks.
ATTENTION_DECISIONS: tuple[str, ...] = (*BLOCKED_DECISIONS, "flagged")
# Latency percentiles reported by `stats` (nearest rank).
PERCENTILES: tuple[int, int] = (50, 95)


@dataclass(frozen=True, slots=True)
class SpanQuery:
    """Filters for listing spans; every field optional, newest first.

    Span-level fields filter spans. The finding fields (`finding_type`, `category`,
    `min_severity`) keep spans with at least one finding matching all of them; in `findings`
    listings they filter the finding rows themselves.
    """

    tenant_id: str | None = None
    trace_id: str | None = None
    since: float | None = None  # created_at >= since (unix seconds)
    until: float | None = None  # created_at < until
    finding_type: str | None = None
    min_severity: int | None = None
    decision: str | None = None
    limit: int = 50
    offset: int = 0
    span_id: str | None = None
    agent_id: str | None = None
    model: str | None = None  # model_name
    operation_name: str | None = None
    category: str | None = None  # finding category
    min_security_score: int | None = None


@dataclass(frozen=True, slots=True)
class FindingRow:
    """One stored finding with the span it belongs to, for finding listings."""

    trace_id: str
    span_id: str
    tenant_id: str | None
    agent_id: str | None
    created_at: float
    decision: str
    idx: int  # position among the span's findings
    finding: StoredFinding


@dataclass(frozen=True, slots=True)
class Totals:
    """Request count, token and cost sums over matching spans (missing values count as 0)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Totals of one model (None: spans without a model name)."""

    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class SpanStats:
    """Aggregates over the spans a query matches (its limit and offset are ignored)."""

    totals: Totals = field(default_factory=Totals)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    by_decision: dict[str, int] = field(default_factory=dict)
    by_tenant: list[tuple[str | None, int]] = field(default_factory=list)  # most requests first
    findings_by_type: dict[str, int] = field(default_factory=dict)  # findings, not spans
    models: list[ModelUsage] = field(default_factory=list)  # top models, most requests first
    source_ips: list[tuple[str, int]] = field(default_factory=list)  # top, ATTENTION_DECISIONS

    @property
    def blocked(self) -> int:
        """Requests refused, by policy or by the gate."""
        return sum(self.by_decision.get(d, 0) for d in BLOCKED_DECISIONS)


class TraceStore(Protocol):
    """Where spans are persisted."""

    def write(self, spans: Sequence[SpanRecord]) -> None:
        """Insert or replace (by span id): replaying a batch twice stores it once."""
        ...

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        """Spans matching every given filter, newest first, paginated."""
        ...

    def count(self, query: SpanQuery) -> int:
        """How many spans match (limit and offset ignored)."""
        ...

    def findings(self, query: SpanQuery) -> list[FindingRow]:
        """Finding rows of matching spans, newest span first, paginated per finding."""
        ...

    def count_findings(self, query: SpanQuery) -> int:
        """How many finding rows `findings` would list without pagination."""
        ...

    def totals(self, query: SpanQuery) -> Totals:
        """Request count, token and cost sums of matching spans."""
        ...

    def stats(self, query: SpanQuery, *, top: int = 10) -> SpanStats:
        """Aggregates of matching spans; `top` bounds the model and source IP rankings."""
        ...

    def purge(self, before: float) -> int:
        """Delete traces created before `before` (unix seconds); returns how many."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


# -- filtering and aggregating in Python (the memory store) -----------------------------------
def _has_finding_filter(q: SpanQuery) -> bool:
    return q.finding_type is not None or q.category is not None or q.min_severity is not None


def _finding_matches(f: StoredFinding, q: SpanQuery) -> bool:
    return (
        (q.finding_type is None or f.type == q.finding_type)
        and (q.category is None or f.category == q.category)
        and (q.min_severity is None or f.severity >= q.min_severity)
    )


def _span_matches(span: SpanRecord, q: SpanQuery) -> bool:
    """The span-level filters only (the finding filters are applied by the caller)."""
    for wanted, actual in (
        (q.tenant_id, span.tenant_id),
        (q.trace_id, span.trace_id),
        (q.span_id, span.span_id),
        (q.agent_id, span.agent_id),
        (q.model, span.model_name),
        (q.operation_name, span.operation_name),
        (q.decision, span.decision),
    ):
        if wanted is not None and actual != wanted:
            return False
    if q.since is not None and span.created_at < q.since:
        return False
    if q.until is not None and span.created_at >= q.until:
        return False
    return q.min_security_score is None or span.security_score >= q.min_security_score


def _matches(span: SpanRecord, q: SpanQuery) -> bool:
    if not _span_matches(span, q):
        return False
    return not _has_finding_filter(q) or any(_finding_matches(f, q) for f in span.findings)


def _newest_first(span: SpanRecord) -> tuple[float, str]:
    # span_id breaks ties so pages never overlap; the SQL orders the same way.
    return (span.created_at, span.span_id)


def nearest_rank(percentile: int, n: int) -> int:
    """The 1-based rank of a percentile among `n` sorted values (integer maths, as in SQL)."""
    return (percentile * n + 99) // 100


def _nulls_last(name: str | None) -> tuple[bool, str]:
    """Sort key part: names in order, None after them (as `x IS NULL, x` sorts in SQL)."""
    return (name is None, name or "")


def _python_stats(spans: Sequence[SpanRecord], top: int) -> SpanStats:
    latencies = sorted(s.latency_ms for s in spans if s.latency_ms is not None)
    p50, p95 = (
        latencies[nearest_rank(p, len(latencies)) - 1] if latencies else None for p in PERCENTILES
    )
    models: dict[str | None, list[Any]] = {}
    for s in spans:
        m = models.setdefault(s.model_name, [0, 0, 0, 0.0])
        m[0] += 1
        m[1] += s.prompt_tokens or 0
        m[2] += s.completion_tokens or 0
        m[3] += s.estimated_cost_usd or 0.0
    ranked_models = sorted(models.items(), key=lambda kv: (-kv[1][0], *_nulls_last(kv[0])))[:top]
    tenants = Counter(s.tenant_id for s in spans)
    ips = Counter(
        s.source_ip for s in spans if s.source_ip is not None and s.decision in ATTENTION_DECISIONS
    )
    return SpanStats(
        totals=Totals(
            requests=len(spans),
            prompt_tokens=sum(s.prompt_tokens or 0 for s in spans),
            completion_tokens=sum(s.completion_tokens or 0 for s in spans),
            cost_usd=sum(s.estimated_cost_usd or 0.0 for s in spans),
        ),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        by_decision=dict(Counter(s.decision for s in spans)),
        by_tenant=sorted(tenants.items(), key=lambda kv: (-kv[1], *_nulls_last(kv[0]))),
        findings_by_type=dict(Counter(f.type for s in spans for f in s.findings)),
        models=[ModelUsage(name, *values) for name, values in ranked_models],
        source_ips=sorted(ips.items(), key=lambda kv: (-kv[1], kv[0]))[:top],
    )


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

    def _matching(self, query: SpanQuery) -> list[SpanRecord]:
        with self._lock:
            found = [s for s in self._spans.values() if _matches(s, query)]
        found.sort(key=_newest_first, reverse=True)
        return found

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        """Filter, newest first, paginate."""
        return self._matching(query)[query.offset : query.offset + query.limit]

    def count(self, query: SpanQuery) -> int:
        """How many spans match."""
        return len(self._matching(query))

    def _finding_rows(self, query: SpanQuery) -> list[FindingRow]:
        with self._lock:
            spans = [s for s in self._spans.values() if _span_matches(s, query)]
        spans.sort(key=_newest_first, reverse=True)
        return [
            FindingRow(
                s.trace_id, s.span_id, s.tenant_id, s.agent_id, s.created_at, s.decision, i, f
            )
            for s in spans
            for i, f in enumerate(s.findings)
            if _finding_matches(f, query)
        ]

    def findings(self, query: SpanQuery) -> list[FindingRow]:
        """Finding rows, newest span first, paginated."""
        return self._finding_rows(query)[query.offset : query.offset + query.limit]

    def count_findings(self, query: SpanQuery) -> int:
        """How many finding rows match."""
        return len(self._finding_rows(query))

    def totals(self, query: SpanQuery) -> Totals:
        """Sums over matching spans."""
        return _python_stats(self._matching(query), 0).totals

    def stats(self, query: SpanQuery, *, top: int = 10) -> SpanStats:
        """Aggregates over matching spans, computed in Python."""
        return _python_stats(self._matching(query), top)

    def purge(self, before: float) -> int:
        """Delete spans created before `before`."""
        with self._lock:
            old = [k for k, v in self._spans.items() if v.created_at < before]
            for key in old:
                del self._spans[key]
        return len(old)

    def close(self) -> None:
        """Nothing to release."""


# -- SQL shared by SQLite and PostgreSQL -------------------------------------------------------
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
_FINDING_FIELDS = ("type", "category", "severity", "confidence", "location", "rule_id", "detector")

Placeholder = Callable[[int], str]
Statement = tuple[str, list[Any]]


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


class _Args:
    """Collects statement arguments; calling it returns the placeholder for the value."""

    def __init__(self, placeholder: Placeholder) -> None:
        self.values: list[Any] = []
        self._placeholder = placeholder

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self._placeholder(len(self.values))


def _finding_conditions(query: SpanQuery, arg: _Args, alias: str) -> list[str]:
    where = []
    if query.finding_type is not None:
        where.append(f"{alias}.type = {arg(query.finding_type)}")
    if query.category is not None:
        where.append(f"{alias}.category = {arg(query.category)}")
    if query.min_severity is not None:
        where.append(f"{alias}.severity >= {arg(query.min_severity)}")
    return where


def _span_conditions(query: SpanQuery, arg: _Args, *, finding_exists: bool) -> list[str]:
    """WHERE terms on `spans s` (and `traces t` for the agent); every one is indexable or
    narrows an indexed range (tenant/time/decision/trace)."""
    where: list[str] = []
    for column, op, value in (
        ("s.tenant_id", "=", query.tenant_id),
        ("s.trace_id", "=", query.trace_id),
        ("s.span_id", "=", query.span_id),
        ("t.agent_id", "=", query.agent_id),
        ("s.model_name", "=", query.model),
        ("s.operation_name", "=", query.operation_name),
        ("s.created_at", ">=", query.since),
        ("s.created_at", "<", query.until),
        ("s.decision", "=", query.decision),
        ("s.security_score", ">=", query.min_security_score),
    ):
        if value is not None:
            where.append(f"{column} {op} {arg(value)}")
    if finding_exists and _has_finding_filter(query):
        sub = ["e.span_id = s.span_id", *_finding_conditions(query, arg, "e")]
        where.append(f"EXISTS (SELECT 1 FROM findings e WHERE {' AND '.join(sub)})")
    return where


def _from(query: SpanQuery, *, agent: bool = False, findings: bool = False) -> str:
    """`spans s`, with `findings f` (one row per finding) and `traces t` when needed."""
    source = "spans s"
    if findings:
        source += " JOIN findings f ON f.span_id = s.span_id"
    # The trace is joined only for its agent id: aggregates over many spans skip the lookup.
    if agent or query.agent_id is not None:
        source += " JOIN traces t ON t.trace_id = s.trace_id"
    return source


def _where(terms: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(terms)}" if terms else ""


def span_select(query: SpanQuery, placeholder: Placeholder) -> Statement:
    """The SELECT for a SpanQuery and its arguments; `placeholder(n)` spells argument n (1-based).

    Shared by SQLite (`?`) and PostgreSQL (`$n`): both return spans joined with their trace's
    agent id, newest first.
    """
    arg = _Args(placeholder)
    where = _span_conditions(query, arg, finding_exists=True)
    sql = (
        f"SELECT s.{', s.'.join(_SPAN_COLUMNS)}, t.agent_id FROM {_from(query, agent=True)}"
        + _where(where)
        + " ORDER BY s.created_at DESC, s.span_id DESC"
        + f" LIMIT {arg(query.limit)} OFFSET {arg(query.offset)}"
    )
    return sql, arg.values


def span_count(query: SpanQuery, placeholder: Placeholder) -> Statement:
    """SELECT count(*) of the spans `span_select` pages through."""
    arg = _Args(placeholder)
    where = _span_conditions(query, arg, finding_exists=True)
    return f"SELECT count(*) FROM {_from(query)}{_where(where)}", arg.values


def _finding_join(query: SpanQuery, arg: _Args, *, agent: bool) -> str:
    """FROM and WHERE of the finding rows: span filters on the span, finding filters per row."""
    where = [
        *_span_conditions(query, arg, finding_exists=False),
        *_finding_conditions(query, arg, "f"),
    ]
    return f"{_from(query, agent=agent, findings=True)}{_where(where)}"


def finding_select(query: SpanQuery, placeholder: Placeholder) -> Statement:
    """Finding rows (span fields, idx, then the finding's), newest span first, paginated."""
    arg = _Args(placeholder)
    sql = (
        "SELECT s.trace_id, s.span_id, s.tenant_id, t.agent_id, s.created_at, s.decision, "
        f"f.idx, f.{', f.'.join(_FINDING_FIELDS)} FROM {_finding_join(query, arg, agent=True)}"
        " ORDER BY s.created_at DESC, s.span_id DESC, f.idx"
        f" LIMIT {arg(query.limit)} OFFSET {arg(query.offset)}"
    )
    return sql, arg.values


def finding_count(query: SpanQuery, placeholder: Placeholder) -> Statement:
    """SELECT count(*) of the rows `finding_select` pages through."""
    arg = _Args(placeholder)
    return f"SELECT count(*) FROM {_finding_join(query, arg, agent=False)}", arg.values


def finding_from_row(row: Sequence[Any]) -> FindingRow:
    """A `finding_select` row as a FindingRow."""
    trace_id, span_id, tenant_id, agent_id, created_at, decision, idx = row[:7]
    return FindingRow(
        trace_id, span_id, tenant_id, agent_id, created_at, decision, idx, StoredFinding(*row[7:])
    )


def totals_select(query: SpanQuery, placeholder: Placeholder) -> Statement:
    """One row: requests, prompt tokens, completion tokens, cost."""
    arg = _Args(placeholder)
    where = _span_conditions(query, arg, finding_exists=True)
    return (
        "SELECT count(*), COALESCE(SUM(s.prompt_tokens), 0), "
        "COALESCE(SUM(s.completion_tokens), 0), COALESCE(SUM(s.estimated_cost_usd), 0) "
        f"FROM {_from(query)}{_where(where)}",
        arg.values,
    )


def totals_from_row(row: Sequence[Any]) -> Totals:
    """A `totals_select` row as Totals."""
    return Totals(int(row[0]), int(row[1]), int(row[2]), float(row[3]))


def stats_statements(query: SpanQuery, placeholder: Placeholder, top: int) -> list[Statement]:
    """The statements behind `stats`, in the order `stats_from_rows` reads their rows.

    Each is a GROUP BY over the same filtered range (an indexed tenant/time or decision/time
    scan); the percentiles rank rows with a window function, which both databases have.
    """
    statements = [totals_select(query, placeholder)]

    def grouped(
        select: str, group: str, order: str = "", *, extra: Sequence[str] = (), source: str = ""
    ) -> None:
        arg = _Args(placeholder)
        where = [*_span_conditions(query, arg, finding_exists=True), *extra]
        sql = f"SELECT {select} FROM {source or _from(query)}{_where(where)} GROUP BY {group}"
        if order:  # the rankings: most rows first, ties by name, `top` of them
            sql += f" ORDER BY count(*) DESC, {order} LIMIT {arg(top)}"
        statements.append((sql, arg.values))

    grouped("s.decision, count(*)", "s.decision")
    # Every tenant (they are few), ranked in Python.
    grouped("s.tenant_id, count(*)", "s.tenant_id")
    grouped(
        "s.model_name, count(*), COALESCE(SUM(s.prompt_tokens), 0), "
        "COALESCE(SUM(s.completion_tokens), 0), COALESCE(SUM(s.estimated_cost_usd), 0)",
        "s.model_name",
        "s.model_name IS NULL, s.model_name",  # unknown model last, on both databases
    )
    grouped(
        "f.type, count(*)",
        "f.type",
        source=_from(query, findings=True),
    )
    decisions = ", ".join(f"'{d}'" for d in ATTENTION_DECISIONS)  # constants, not input
    grouped(
        "s.source_ip, count(*)",
        "s.source_ip",
        "s.source_ip",
        extra=[f"s.decision IN ({decisions})", "s.source_ip IS NOT NULL"],
    )
    arg = _Args(placeholder)
    where = [*_span_conditions(query, arg, finding_exists=True), "s.latency_ms IS NOT NULL"]
    ranks = ", ".join(f"({p} * n + 99) / 100" for p in PERCENTILES)  # nearest_rank, in SQL
    statements.append(
        (
            "SELECT rn, n, latency_ms FROM (SELECT s.latency_ms AS latency_ms, "
            "row_number() OVER (ORDER BY s.latency_ms) AS rn, count(*) OVER () AS n "
            f"FROM {_from(query)}{_where(where)}) ranked WHERE rn IN ({ranks})",
            arg.values,
        )
    )
    return statements


def stats_from_rows(results: Sequence[Sequence[Sequence[Any]]]) -> SpanStats:
    """SpanStats from the rows of `stats_statements`, in order."""
    totals, decisions, tenants, models, types, ips, ranked = results
    by_rank = {int(rn): float(value) for rn, _, value in ranked}
    n = int(ranked[0][1]) if ranked else 0
    p50, p95 = (by_rank.get(nearest_rank(p, n)) for p in PERCENTILES)
    return SpanStats(
        totals=totals_from_row(totals[0]),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        by_decision={str(d): int(c) for d, c in decisions},
        by_tenant=sorted(
            ((t, int(c)) for t, c in tenants), key=lambda kv: (-kv[1], *_nulls_last(kv[0]))
        ),
        findings_by_type={str(t): int(c) for t, c in types},
        models=[
            ModelUsage(m, int(c), int(pt), int(ct), float(cost)) for m, c, pt, ct, cost in models
        ],
        source_ips=[(str(ip), int(c)) for ip, c in ips],
    )


# -- SQLite ------------------------------------------------------------------------------------
_MAX_IDLE_READERS = 8


class SqliteTraceStore:
    """The `lite` profile: one SQLite file (WAL mode), migrated on open if asked.

    Writes go through one connection under a lock. Reads (the admin API, from several threads)
    take a connection of their own from a small pool: in WAL mode readers never wait for the
    writer, and each read runs in one transaction, so a page and its findings (or the parts of
    a stats answer) come from the same snapshot.
    """

    def __init__(self, path: Path | str, *, migrate: bool = True) -> None:
        self._path = str(path)
        # An in-memory database is private to its connection: read through the writer's.
        self._shared_reads = self._path not in ("", ":memory:")
        self._conn = self._connect()
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self.applied = migrate_sqlite(self._conn) if migrate else []
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # Worker processes share the file: wait for its lock rather than fail.
        return sqlite3.connect(
            self._path, check_same_thread=False, isolation_level=None, timeout=30
        )

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for one read, inside a read transaction (one consistent snapshot)."""
        if not self._shared_reads:
            with self._lock:
                yield self._conn
            return
        with self._pool_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")  # a reader must never write
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except BaseException:
            conn.close()  # its state is unknown: never pool it
            raise
        with self._pool_lock:
            if self._closed or len(self._idle) >= _MAX_IDLE_READERS:
                conn.close()
            else:
                self._idle.append(conn)

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
        with self._reading() as conn:
            rows = conn.execute(sql, args).fetchall()
            found: dict[str, list[StoredFinding]] = {}
            if rows:
                # One query for the whole page's findings rather than one per span.
                ids = [row[0] for row in rows]
                for f in conn.execute(
                    f"SELECT span_id, {', '.join(_FINDING_FIELDS)} FROM findings "
                    f"WHERE span_id IN ({','.join('?' * len(ids))}) ORDER BY span_id, idx",
                    ids,
                ):
                    found.setdefault(f[0], []).append(StoredFinding(*f[1:]))
        spans = []
        for row in rows:
            values = dict(zip(_SPAN_COLUMNS, row, strict=False))
            values["agent_id"] = row[-1]
            spans.append(SpanRecord(**values, findings=tuple(found.get(row[0], ()))))
        return spans

    def _scalar(self, statement: Statement) -> Any:
        with self._reading() as conn:
            return conn.execute(*statement).fetchone()

    def count(self, query: SpanQuery) -> int:
        """How many spans match."""
        return int(self._scalar(span_count(query, lambda n: "?"))[0])

    def findings(self, query: SpanQuery) -> list[FindingRow]:
        """Finding rows, newest span first, paginated."""
        sql, args = finding_select(query, lambda n: "?")
        with self._reading() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [finding_from_row(row) for row in rows]

    def count_findings(self, query: SpanQuery) -> int:
        """How many finding rows match."""
        return int(self._scalar(finding_count(query, lambda n: "?"))[0])

    def totals(self, query: SpanQuery) -> Totals:
        """Sums over matching spans."""
        return totals_from_row(self._scalar(totals_select(query, lambda n: "?")))

    def stats(self, query: SpanQuery, *, top: int = 10) -> SpanStats:
        """Aggregates over matching spans, one GROUP BY each, in one snapshot."""
        with self._reading() as conn:
            results = [
                conn.execute(sql, args).fetchall()
                for sql, args in stats_statements(query, lambda n: "?", top)
            ]
        return stats_from_rows(results)

    def purge(self, before: float) -> int:
        """Delete traces created before `before`; spans and findings cascade."""
        with self._lock:
            cursor = self._conn.execute("DELETE FROM traces WHERE created_at < ?", (before,))
            return cursor.rowcount

    def close(self) -> None:
        """Close the connections (readers in use close when their read ends)."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._lock:
            self._conn.close()
