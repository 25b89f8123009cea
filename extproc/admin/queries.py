"""Read-only admin routes over stored traces: listings, one trace or span, stats, findings,
current spend and what the policy did.

Every route needs the `viewer` role; a tenant-scoped key sees its own tenant only (asking for
another tenant's listing is 403, reading another tenant's trace is 404). With trace storage
off (`ctx.store is None`) they answer 503 `storage_disabled`.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route signatures, whose
# Annotated[..., Depends(...)] refer to this function's locals (ctx), at definition time.

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from extproc.admin.auth import Principal, check_tenant, require, tenant_scope
from extproc.admin.context import AdminContext
from extproc.admin.errors import ERROR_RESPONSES, ApiError, ErrorResponse
from extproc.config import BUDGET_WINDOW_SECONDS, BudgetCap, BudgetWindow
from extproc.detect.findings import Severity
from extproc.storage.model import SpanRecord, StoredFinding
from extproc.storage.stores import FindingRow, ModelUsage, SpanQuery, SpanStats, TraceStore

log = logging.getLogger("extproc.admin")

T = TypeVar("T")

# 503 is not in the shared ERROR_RESPONSES: only these routes depend on trace storage.
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    503: {"model": ErrorResponse, "description": "Trace storage is disabled or unreachable"},
}

# The store failing (database down, timed out, locked) is a 503, not a 500: it is transient
# and not the caller's fault.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    sqlite3.OperationalError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

DAY = 86400.0
# Accepted times: the epoch to the end of year 9999, so every one prints as ISO 8601.
_MAX_TIME = 253402300799.0
# Query strings: no control characters (PostgreSQL refuses NUL in text).
_TEXT = r"^[^\x00-\x1f\x7f]+$"
_MAX_TRACE_SPANS = 1000  # one span per trace today; a bound for when traces grow

SeverityName = Literal["info", "low", "medium", "high", "critical"]

Text = Annotated[str | None, Query(min_length=1, max_length=256, pattern=_TEXT)]
TimeParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Unix seconds (e.g. 1718000000.5) or ISO 8601 (e.g. 2024-06-10T06:13:20Z; "
        "UTC when no offset).",
        examples=["1718000000", "2024-06-10T06:13:20Z"],
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Rows to skip.")]
IdPath = Annotated[str, Path(min_length=1, max_length=256, pattern=_TEXT)]


# -- response models ---------------------------------------------------------------------------
class FindingOut(BaseModel):
    """A finding as stored: what, how bad, where in the request or response, and which rule."""

    type: str
    category: str
    severity: SeverityName
    confidence: float
    location: str = Field(description="e.g. request:messages[0].content:12-40")
    rule_id: str
    detector: str


class TraceSummary(BaseModel):
    """A trace in a listing: no prompt or response text."""

    trace_id: str
    tenant_id: str | None
    agent_id: str | None
    created_at: datetime
    model: str | None
    decision: str
    status_code: int | None
    security_score: int = Field(description="0 (nothing found) to 100.")
    prompt_tokens: int | None
    completion_tokens: int | None
    estimated_cost_usd: float | None
    latency_ms: float | None
    finding_types: list[str] = Field(description="Distinct finding types, sorted.")


class SpanSummary(TraceSummary):
    """A span in a listing: no prompt or response text."""

    span_id: str
    operation_name: str


class SpanDetail(SpanSummary):
    """A whole span: its findings and the text `storage.capture_content` let it keep."""

    dialect: str | None
    prompt: str | None
    response: str | None
    usage_source: str | None
    ttft_ms: float | None
    source_ip: str | None
    findings: list[FindingOut]


class TraceDetail(BaseModel):
    """A trace and its spans, oldest first."""

    trace_id: str
    tenant_id: str | None
    agent_id: str | None
    created_at: datetime
    spans: list[SpanDetail]


class TracePage(BaseModel):
    """One page of traces, newest first."""

    items: list[TraceSummary]
    total: int = Field(description="Matching traces over all pages.")
    limit: int
    offset: int


class SpanPage(BaseModel):
    """One page of spans, newest first."""

    items: list[SpanSummary]
    total: int = Field(description="Matching spans over all pages.")
    limit: int
    offset: int


class FindingRowOut(FindingOut):
    """A finding with the request it was found in."""

    trace_id: str
    span_id: str
    tenant_id: str | None
    agent_id: str | None
    created_at: datetime
    decision: str


class FindingPage(BaseModel):
    """One page of findings, newest request first."""

    items: list[FindingRowOut]
    total: int = Field(description="Matching findings over all pages.")
    limit: int
    offset: int


class Tokens(BaseModel):
    """Token sums (requests without usage count as 0)."""

    prompt: int
    completion: int
    total: int


class Latency(BaseModel):
    """Nearest-rank latency percentiles; null without timed requests."""

    p50_ms: float | None
    p95_ms: float | None


class ModelOut(BaseModel):
    """Use of one model (null: requests whose model is unknown)."""

    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class Stats(BaseModel):
    """Totals over a time window."""

    tenant_id: str | None = Field(description="null: every tenant.")
    since: datetime
    until: datetime
    requests: int
    by_decision: dict[str, int]
    blocked: int = Field(
        description="Refused: blocked by policy, or ip_blocked / rate_limited / "
        "budget_exceeded / token_cap before the upstream."
    )
    flagged: int
    findings_by_type: dict[str, int] = Field(description="Findings (not requests) per type.")
    tokens: Tokens
    cost_usd: float
    latency: Latency
    top_models: list[ModelOut] = Field(description="Most requests first.")


class TenantCount(BaseModel):
    """Requests of one tenant (null: requests without a tenant)."""

    tenant_id: str | None
    requests: int


class GlobalStats(Stats):
    """Totals across tenants, with each tenant's request count."""

    tenants: list[TenantCount] = Field(description="Most requests first.")


class CostWindow(BaseModel):
    """Spend over a rolling window ending now, with the budget caps configured for it."""

    window: BudgetWindow
    since: datetime
    requests: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    soft_limit_usd: float | None
    hard_limit_usd: float | None


class Costs(BaseModel):
    """Current spend of a tenant (or one of its agents), from stored estimated costs."""

    tenant_id: str
    agent_id: str | None
    as_of: datetime
    caps_enforced: bool = Field(description="cost_caps.enabled: hard limits answer 429.")
    windows: list[CostWindow]
    models_today: list[ModelOut] = Field(description="The daily window by model.")


class SourceIpCount(BaseModel):
    """Blocked or flagged requests from one source address."""

    source_ip: str
    requests: int


class ActionsSummary(BaseModel):
    """What the policy did over a time window."""

    tenant_id: str | None = Field(description="null: every tenant.")
    since: datetime
    until: datetime
    requests: int
    by_decision: dict[str, int] = Field(
        description="allowed, flagged, redacted, blocked, rate_limited, ... as stored."
    )
    blocked: int
    flagged: int
    findings_by_type: dict[str, int]
    top_source_ips: list[SourceIpCount] = Field(
        description="Among blocked (or otherwise refused) and flagged requests."
    )


# -- parameters --------------------------------------------------------------------------------
def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_parameters", message)


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (UTC when naive) → unix seconds; 422 when neither."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _invalid(
                f"{name}: expected unix seconds or an ISO 8601 time, got {value!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not (math.isfinite(seconds) and 0 <= seconds <= _MAX_TIME):
        raise _invalid(f"{name}: {value!r} is out of range (1970 to 9999)")
    return seconds


def _window(
    since: str | None, until: str | None, default: float | None
) -> tuple[float | None, float | None]:
    """since/until as unix seconds; with `default`, a missing bound makes a window ending now."""
    start, end = parse_time(since, "since"), parse_time(until, "until")
    if default is not None:
        end = time.time() if end is None else end
        start = max(0.0, end - default) if start is None else start
    if start is not None and end is not None and start > end:
        raise _invalid("since must not be after until")
    return start, end


def _iso(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


_SEVERITY_NAMES: dict[int, SeverityName] = {
    Severity.INFO: "info",
    Severity.LOW: "low",
    Severity.MEDIUM: "medium",
    Severity.HIGH: "high",
    Severity.CRITICAL: "critical",
}


def _severity(level: int) -> SeverityName:
    # A level outside the enum (a newer writer) shows as the nearest name we know.
    return _SEVERITY_NAMES.get(level, "critical" if level > Severity.CRITICAL else "info")


@dataclass(frozen=True, slots=True)
class _Filters:
    """The filters shared by the trace and span listings."""

    tenant_id: str | None
    agent_id: str | None
    model: str | None
    decision: str | None
    since: float | None
    until: float | None
    finding_type: str | None
    min_security_score: int | None

    def query(self, tenant_id: str | None, **extra: Any) -> SpanQuery:
        """A SpanQuery of these filters for `tenant_id` (the scoped one)."""
        return SpanQuery(
            tenant_id=tenant_id,
            agent_id=self.agent_id,
            model=self.model,
            decision=self.decision,
            since=self.since,
            until=self.until,
            finding_type=self.finding_type,
            min_security_score=self.min_security_score,
            **extra,
        )


def _list_filters(
    tenant_id: Text = None,
    agent_id: Text = None,
    model: Text = None,
    decision: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=_TEXT,
            description="allowed, flagged, redacted, blocked, rate_limited, ...",
        ),
    ] = None,
    since: TimeParam = None,
    until: TimeParam = None,
    finding_type: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            pattern=_TEXT,
            description="Keep requests with at least one finding of this type.",
        ),
    ] = None,
    min_security_score: Annotated[int | None, Query(ge=0, le=100)] = None,
) -> _Filters:
    """The listing filters, parsed (times) and checked (since <= until)."""
    start, end = _window(since, until, None)
    return _Filters(
        tenant_id, agent_id, model, decision, start, end, finding_type, min_security_score
    )


# -- conversions -------------------------------------------------------------------------------
def _finding(f: StoredFinding) -> dict[str, Any]:
    return {
        "type": f.type,
        "category": f.category,
        "severity": _severity(f.severity),
        "confidence": f.confidence,
        "location": f.location,
        "rule_id": f.rule_id,
        "detector": f.detector,
    }


def _summary(span: SpanRecord) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "tenant_id": span.tenant_id,
        "agent_id": span.agent_id,
        "created_at": _iso(span.created_at),
        "operation_name": span.operation_name,
        "model": span.model_name,
        "decision": span.decision,
        "status_code": span.status_code,
        "security_score": span.security_score,
        "prompt_tokens": span.prompt_tokens,
        "completion_tokens": span.completion_tokens,
        "estimated_cost_usd": span.estimated_cost_usd,
        "latency_ms": span.latency_ms,
        "finding_types": sorted({f.type for f in span.findings}),
    }


def _detail(span: SpanRecord) -> dict[str, Any]:
    return {
        **_summary(span),
        "dialect": span.dialect,
        "prompt": span.prompt,
        "response": span.response,
        "usage_source": span.usage_source,
        "ttft_ms": span.ttft_ms,
        "source_ip": span.source_ip,
        "findings": [_finding(f) for f in span.findings],
    }


def _finding_row(row: FindingRow) -> dict[str, Any]:
    return {
        **_finding(row.finding),
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "tenant_id": row.tenant_id,
        "agent_id": row.agent_id,
        "created_at": _iso(row.created_at),
        "decision": row.decision,
    }


def _model(m: ModelUsage) -> dict[str, Any]:
    return {
        "model": m.model,
        "requests": m.requests,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "cost_usd": m.cost_usd,
    }


def _stats(stats: SpanStats, tenant_id: str | None, since: float, until: float) -> dict[str, Any]:
    totals = stats.totals
    return {
        "tenant_id": tenant_id,
        "since": _iso(since),
        "until": _iso(until),
        "requests": totals.requests,
        "by_decision": stats.by_decision,
        "blocked": stats.blocked,
        "flagged": stats.by_decision.get("flagged", 0),
        "findings_by_type": stats.findings_by_type,
        "tokens": {
            "prompt": totals.prompt_tokens,
            "completion": totals.completion_tokens,
            "total": totals.prompt_tokens + totals.completion_tokens,
        },
        "cost_usd": totals.cost_usd,
        "latency": {"p50_ms": stats.latency_p50_ms, "p95_ms": stats.latency_p95_ms},
        "top_models": [_model(m) for m in stats.models],
    }


# -- routes ------------------------------------------------------------------------------------
def build_router(ctx: AdminContext) -> APIRouter:
    """The read-only trace, stats, findings, costs and actions routes (viewer and up)."""
    router = APIRouter(prefix="/api/v1", responses=RESPONSES)
    viewer = require(ctx, "viewer")

    def read(op: Callable[[TraceStore], T]) -> T:
        """Run a store read; 503 when storage is off or the database is unreachable."""
        store = ctx.store
        if store is None:
            raise ApiError(
                503,
                "storage_disabled",
                "Trace storage is disabled (enable_trace_storage is false).",
            )
        try:
            return op(store)
        except _UNAVAILABLE as exc:
            log.warning("admin API: trace store read failed: %r", exc)
            raise ApiError(
                503, "storage_unavailable", "The trace store is unavailable; retry later."
            ) from None

    def one_tenant(principal: Principal, tenant_id: str | None, route: str) -> str:
        tenant = tenant_scope(principal, tenant_id)
        if tenant is None:
            raise ApiError(
                400,
                "bad_request",
                f"Name the tenant: {route}?tenant_id=... (an unscoped key sees every tenant).",
            )
        return tenant

    @router.get("/traces", response_model=TracePage, tags=["traces"], summary="List traces")
    def list_traces(
        principal: Annotated[Principal, Depends(viewer)],
        filters: Annotated[_Filters, Depends(_list_filters)],
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Traces matching every filter, newest first, without prompt or response text."""
        # One span per trace today, so the trace listing is the span listing, summarised.
        query = filters.query(
            tenant_scope(principal, filters.tenant_id), limit=limit, offset=offset
        )
        spans, total = read(lambda s: (s.query(query), s.count(query)))
        # TraceSummary drops the span's own fields (span_id, operation_name).
        items = [_summary(span) for span in spans]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @router.get(
        "/traces/{trace_id}",
        response_model=TraceDetail,
        tags=["traces"],
        summary="Get a trace with its spans",
    )
    def get_trace(
        trace_id: IdPath, principal: Annotated[Principal, Depends(viewer)]
    ) -> dict[str, Any]:
        """The trace and every span with findings and stored text; 404 when unknown."""
        spans = read(lambda s: s.query(SpanQuery(trace_id=trace_id, limit=_MAX_TRACE_SPANS)))
        if not spans:
            # The same answer as check_tenant's, so a scoped key cannot probe for ids.
            raise ApiError(404, "not_found", "Not found.")
        check_tenant(principal, spans[0].tenant_id)
        spans.sort(key=lambda s: (s.created_at, s.span_id))
        first = spans[0]
        return {
            "trace_id": first.trace_id,
            "tenant_id": first.tenant_id,
            "agent_id": first.agent_id,
            "created_at": _iso(first.created_at),
            "spans": [_detail(s) for s in spans],
        }

    @router.get("/spans", response_model=SpanPage, tags=["traces"], summary="List spans")
    def list_spans(
        principal: Annotated[Principal, Depends(viewer)],
        filters: Annotated[_Filters, Depends(_list_filters)],
        operation_name: Text = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Spans matching every filter, newest first, without prompt or response text."""
        query = filters.query(
            tenant_scope(principal, filters.tenant_id),
            operation_name=operation_name,
            limit=limit,
            offset=offset,
        )
        spans, total = read(lambda s: (s.query(query), s.count(query)))
        return {
            "items": [_summary(span) for span in spans],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    @router.get(
        "/spans/{span_id}", response_model=SpanDetail, tags=["traces"], summary="Get a span"
    )
    def get_span(
        span_id: IdPath, principal: Annotated[Principal, Depends(viewer)]
    ) -> dict[str, Any]:
        """One span with findings and stored text; 404 when unknown."""
        found = read(lambda s: s.query(SpanQuery(span_id=span_id, limit=1)))
        if not found:
            raise ApiError(404, "not_found", "Not found.")
        check_tenant(principal, found[0].tenant_id)
        return _detail(found[0])

    @router.get("/stats", response_model=Stats, tags=["stats"], summary="Stats of one tenant")
    def get_stats(
        principal: Annotated[Principal, Depends(viewer)],
        tenant_id: Text = None,
        since: TimeParam = None,
        until: TimeParam = None,
    ) -> dict[str, Any]:
        """One tenant's totals over since/until (default: the last 24 hours)."""
        tenant = one_tenant(principal, tenant_id, "/api/v1/stats")
        start, end = _window(since, until, DAY)
        assert start is not None and end is not None  # a default window always has both
        stats = read(lambda s: s.stats(SpanQuery(tenant_id=tenant, since=start, until=end)))
        return _stats(stats, tenant, start, end)

    @router.get(
        "/stats/global",
        response_model=GlobalStats,
        tags=["stats"],
        summary="Stats across tenants (unscoped keys)",
    )
    def get_global_stats(
        principal: Annotated[Principal, Depends(viewer)],
        since: TimeParam = None,
        until: TimeParam = None,
    ) -> dict[str, Any]:
        """Totals across every tenant, and requests per tenant (default: the last 24 hours)."""
        if principal.tenant_id is not None:
            raise ApiError(403, "forbidden", "Global stats need a key not scoped to a tenant.")
        start, end = _window(since, until, DAY)
        assert start is not None and end is not None
        stats = read(lambda s: s.stats(SpanQuery(since=start, until=end)))
        return {
            **_stats(stats, None, start, end),
            "tenants": [{"tenant_id": t, "requests": n} for t, n in stats.by_tenant],
        }

    @router.get(
        "/security/findings",
        response_model=FindingPage,
        tags=["security"],
        summary="List findings",
    )
    def list_findings(
        principal: Annotated[Principal, Depends(viewer)],
        tenant_id: Text = None,
        finding_type: Text = None,
        min_severity: SeverityName | None = None,
        category: Text = None,
        since: TimeParam = None,
        until: TimeParam = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """One row per finding, newest request first."""
        start, end = _window(since, until, None)
        query = SpanQuery(
            tenant_id=tenant_scope(principal, tenant_id),
            finding_type=finding_type,
            category=category,
            min_severity=None if min_severity is None else int(Severity.parse(min_severity)),
            since=start,
            until=end,
            limit=limit,
            offset=offset,
        )
        rows, total = read(lambda s: (s.findings(query), s.count_findings(query)))
        return {
            "items": [_finding_row(r) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    @router.get("/costs/current", response_model=Costs, tags=["costs"], summary="Current spend")
    def get_current_costs(
        principal: Annotated[Principal, Depends(viewer)],
        tenant_id: Text = None,
        agent_id: Text = None,
    ) -> dict[str, Any]:
        """Spend over the rolling hourly/daily/weekly/monthly windows, and today's by model."""
        tenant = one_tenant(principal, tenant_id, "/api/v1/costs/current")
        caps_config = ctx.config().cost_caps
        # An agent's own caps when one is asked about, else the tenant-wide defaults.
        caps: dict[str, BudgetCap] = {
            c.window: c
            for c in (
                caps_config.agent_budget_caps(agent_id)
                if agent_id is not None
                else caps_config.default_budget_caps
            )
        }
        now = time.time()

        def run(store: TraceStore) -> tuple[list[dict[str, Any]], SpanStats]:
            windows = []
            for name, seconds in BUDGET_WINDOW_SECONDS.items():
                since = now - seconds
                totals = store.totals(SpanQuery(tenant_id=tenant, agent_id=agent_id, since=since))
                cap = caps.get(name)
                windows.append(
                    {
                        "window": name,
                        "since": _iso(max(0.0, since)),
                        "requests": totals.requests,
                        "cost_usd": totals.cost_usd,
                        "prompt_tokens": totals.prompt_tokens,
                        "completion_tokens": totals.completion_tokens,
                        "soft_limit_usd": cap.soft_limit_usd if cap else None,
                        "hard_limit_usd": cap.hard_limit_usd if cap else None,
                    }
                )
            day = store.stats(
                SpanQuery(tenant_id=tenant, agent_id=agent_id, since=now - DAY), top=50
            )
            return windows, day

        windows, day = read(run)
        return {
            "tenant_id": tenant,
            "agent_id": agent_id,
            "as_of": _iso(now),
            "caps_enforced": caps_config.enabled,
            "windows": windows,
            "models_today": [_model(m) for m in day.models],
        }

    @router.get(
        "/actions/summary",
        response_model=ActionsSummary,
        tags=["security"],
        summary="What the policy did",
    )
    def get_actions_summary(
        principal: Annotated[Principal, Depends(viewer)],
        tenant_id: Text = None,
        since: TimeParam = None,
        until: TimeParam = None,
    ) -> dict[str, Any]:
        """Decisions, finding types and top offending source IPs (default: the last 24 h)."""
        tenant = tenant_scope(principal, tenant_id)
        start, end = _window(since, until, DAY)
        assert start is not None and end is not None
        stats = read(lambda s: s.stats(SpanQuery(tenant_id=tenant, since=start, until=end)))
        return {
            "tenant_id": tenant,
            "since": _iso(start),
            "until": _iso(end),
            "requests": stats.totals.requests,
            "by_decision": stats.by_decision,
            "blocked": stats.blocked,
            "flagged": stats.by_decision.get("flagged", 0),
            "findings_by_type": stats.findings_by_type,
            "top_source_ips": [{"source_ip": ip, "requests": n} for ip, n in stats.source_ips],
        }

    return router
