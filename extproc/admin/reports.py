"""Compliance reports (SOC 2, GDPR, HIPAA): generated in the background, kept as metadata.

`POST /api/v1/reports/generate` stores a `compliance_report` document with status `pending`
and hands its id to this process's report worker, a daemon thread that runs one report at a
time (a report scans every span of its period: the request threads must not). The document
goes `pending` -> `running` -> `completed` (with `content`) or `failed` (with `error`). While
running, the worker refreshes `heartbeat_at` every few seconds.

A process that stops mid-report leaves its document `pending` or `running` forever, so
building the router (server start) fails such documents with "interrupted by restart":
those this host started (only worker 0 serves the admin API, so they cannot still be
running) and those of any host whose heartbeat is older than `STALE_AFTER_S` (a replica
that died). A live replica's report keeps running.

Reports hold counts, finding types, trace ids and audit events: never prompt or response
text, and never key material (secret-looking fields are removed from audit details).
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route signatures, whose
# Annotated[..., Depends(...)] refer to build_router's locals (ctx), at definition time.

import logging
import math
import os
import queue
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extproc.admin.audit import AUDIT_KIND, audit
from extproc.admin.auth import Principal, check_tenant, require, tenant_scope
from extproc.admin.context import AdminContext
from extproc.admin.errors import ERROR_RESPONSES, ApiError, ErrorResponse
from extproc.admin.paging import page
from extproc.admin.tenants import TenantId, now_iso
from extproc.detect.findings import Category, Severity
from extproc.storage.metadata import Document, MetadataStore
from extproc.storage.model import SpanRecord
from extproc.storage.stores import BLOCKED_DECISIONS, SpanQuery, TraceStore

log = logging.getLogger("extproc.admin.reports")

REPORT_KIND = "compliance_report"
ALERT_KIND = "alert_event"  # budget crossings, written by the server (extproc.server.app)
REPORT_VERSION = 1
ReportType = Literal["soc2", "gdpr", "hipaa"]
ReportStatus = Literal["pending", "running", "completed", "failed"]

MAX_LISTED_EVENTS = 1000  # per event list in a report; `truncated` says when more existed
MAX_QUEUED = 16  # reports waiting in this process; beyond, POST answers 429
MAX_FUTURE_S = 86400.0  # period_end may lie at most a day ahead (clock skew, "until tomorrow")
STALE_AFTER_S = 600.0  # a pending/running report without a heartbeat this long is orphaned
HEARTBEAT_EVERY_S = 5.0
PAGE = 500  # spans per trace-store query
INTERRUPTED = "interrupted by restart"
_IDLE_EXIT_S = 30.0  # the worker thread exits when idle this long; the next POST restarts it
_MAX_ERROR_CHARS = 500
_HOST = socket.gethostname()
# Audit detail keys that could hold key material; dropped from reports whatever their value.
_SECRET_KEY = re.compile(r"(^key$|key_hash|secret|token|password|credential)", re.IGNORECASE)
_CHANGE_PREFIXES = ("feature_flags.", "config.", "policy.", "rules.")
_ACCESS_PREFIXES = ("api_key.", "tenant.")

QUEUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    429: {"model": ErrorResponse, "description": "Too many reports waiting; retry later"},
}


class ReportRequest(BaseModel):
    """Body of POST /api/v1/reports/generate."""

    model_config = ConfigDict(extra="forbid")

    report_type: ReportType
    period_start: datetime = Field(description="ISO 8601 (UTC when no offset) or unix seconds.")
    period_end: datetime = Field(description="Exclusive; after period_start, at most a day ahead.")
    tenant_id: TenantId | None = Field(
        None, description="Only this tenant's data; a tenant-scoped caller's own when absent."
    )

    @field_validator("period_start", "period_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # A time without an offset is read as UTC, not as the server's local time.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _period(self) -> Self:
        if self.period_start >= self.period_end:
            raise ValueError("period_start must be before period_end")
        if self.period_end.timestamp() > time.time() + MAX_FUTURE_S:
            raise ValueError("period_end is more than a day in the future")
        return self


class ReportInfo(BaseModel):
    """A report's metadata, as listed (no content)."""

    id: str
    report_type: ReportType
    status: ReportStatus
    period_start: datetime
    period_end: datetime
    tenant_id: str | None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    requested_by: str | None = Field(None, description="Key id of the caller who asked.")


class Report(ReportInfo):
    """A report with its content (null until completed)."""

    content: dict[str, Any] | None = None


class ReportList(BaseModel):
    """One page of reports."""

    items: list[ReportInfo]
    total: int = Field(description="Matching reports over all pages.")
    limit: int
    offset: int


# --- generation (pure over the stores) ------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _severity_name(value: int) -> str:
    try:
        return str(Severity(value))
    except ValueError:
        return str(value)


def _ranked(counter: Counter[str]) -> dict[str, int]:
    """Counts, largest first (ties by name), as a plain dict."""
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def iter_spans(
    store: TraceStore,
    start: float,
    end: float,
    tenant_id: str | None,
    progress: Callable[[], None] | None = None,
) -> Iterator[SpanRecord]:
    """Every span created in [start, end) (of one tenant if given), each once, newest first.

    Pages by time (keyset) rather than offset, so spans written during the scan neither
    shift nor repeat pages. Spans sharing the page's oldest timestamp are fetched on their
    own, since a tie can straddle the page boundary. Stops at an empty page, so a store
    that caps `limit` below `PAGE` is still read to the end.
    """
    cursor = end
    while True:
        page = store.query(SpanQuery(tenant_id=tenant_id, since=start, until=cursor, limit=PAGE))
        if progress is not None:
            progress()
        if not page:
            return
        oldest = min(s.created_at for s in page)
        yield from (s for s in page if s.created_at > oldest)
        yield from _spans_at(store, oldest, tenant_id)
        cursor = oldest


def _spans_at(store: TraceStore, ts: float, tenant_id: str | None) -> Iterator[SpanRecord]:
    """Every span created at exactly `ts` (usually one)."""
    seen: set[str] = set()
    offset = 0
    while True:
        page = store.query(
            SpanQuery(
                tenant_id=tenant_id,
                since=ts,
                until=math.nextafter(ts, math.inf),
                limit=PAGE,
                offset=offset,
            )
        )
        if not page:
            return
        offset += len(page)
        for span in page:
            if span.span_id not in seen:
                seen.add(span.span_id)
                yield span


def oldest_trace_at(store: TraceStore, tenant_id: str | None) -> float | None:
    """When the oldest stored span was created (to about a second), or None when empty.

    Queries list newest first only, so this bisects on `until` with single-row queries.
    """
    newest = store.query(SpanQuery(tenant_id=tenant_id, limit=1))
    if not newest:
        return None
    lo, hi = 0.0, math.nextafter(newest[0].created_at, math.inf)  # oldest lies in [lo, hi)
    found = newest[0].created_at
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        older = store.query(SpanQuery(tenant_id=tenant_id, until=mid, limit=1))
        if older:
            hi, found = mid, older[0].created_at
        else:
            lo = mid
    return found


def _clean(value: Any) -> Any:
    """`value` without dict entries whose key could name key material."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _event_view(event: Document) -> dict[str, Any]:
    ts = float(event.get("timestamp") or 0.0)
    return {
        "id": event.get("id"),
        "timestamp": ts,
        "time": _iso(ts),
        "actor_key_id": event.get("actor_key_id"),
        "actor_role": event.get("actor_role"),
        "action": event.get("action"),
        "target_kind": event.get("target_kind"),
        "target_id": event.get("target_id"),
        "tenant_id": event.get("tenant_id"),
        "details": _clean(event.get("details") or {}),
    }


def _event_section(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Count by action plus the events themselves (oldest first, capped)."""
    return {
        "total": len(events),
        "by_action": _ranked(Counter(str(e["action"]) for e in events)),
        "events": events[:MAX_LISTED_EVENTS],
        "truncated": len(events) > MAX_LISTED_EVENTS,
    }


def _in_period(
    metadata: MetadataStore, kind: str, field: str, start: float, end: float, tenant: str | None
) -> list[Document]:
    docs = []
    for doc in metadata.list(kind, tenant):
        ts = doc.get(field)
        if (
            isinstance(ts, int | float)
            and start <= ts < end
            and (tenant is None or doc.get("tenant_id") == tenant)
        ):
            docs.append(doc)
    return docs


class _Traffic:
    """Aggregates over the spans of a period; holds no text."""

    def __init__(self) -> None:
        self.requests = 0
        self.decisions: Counter[str] = Counter()
        self.by_tenant: Counter[str] = Counter()
        self.by_type: Counter[str] = Counter()
        self.by_category: Counter[str] = Counter()
        self.by_severity: Counter[str] = Counter({str(s): 0 for s in Severity})
        self.findings = 0
        self.high_or_critical = 0
        self.pii_by_type: Counter[str] = Counter()
        self.pii_by_direction: Counter[str] = Counter()
        self.requests_with_pii = 0
        self.incidents: list[dict[str, Any]] = []
        self.incident_count = 0

    @property
    def blocked(self) -> int:
        """Requests refused: by policy (`blocked`) or by the gate (rate limit, budget, ...)."""
        return sum(self.decisions[d] for d in BLOCKED_DECISIONS)

    def add(self, span: SpanRecord) -> None:
        """Count one span and its findings."""
        self.requests += 1
        self.decisions[span.decision] += 1
        self.by_tenant[span.tenant_id or "(none)"] += 1
        has_pii = False
        for f in span.findings:
            self.findings += 1
            self.by_type[f.type] += 1
            self.by_category[f.category] += 1
            self.by_severity[_severity_name(f.severity)] += 1
            if f.severity >= Severity.HIGH:
                self.high_or_critical += 1
            if f.category == Category.PII:
                has_pii = True
                self.pii_by_type[f.type] += 1
                # location is "request:<path>:a-b" or "response:..."
                self.pii_by_direction[f.location.partition(":")[0] or "unknown"] += 1
        self.requests_with_pii += has_pii
        severe = [f for f in span.findings if f.severity >= Severity.HIGH]
        if span.decision in BLOCKED_DECISIONS and severe:
            self.incident_count += 1
            if len(self.incidents) < MAX_LISTED_EVENTS:
                self.incidents.append(
                    {
                        "trace_id": span.trace_id,
                        "span_id": span.span_id,
                        "tenant_id": span.tenant_id,
                        "time": _iso(span.created_at),
                        "decision": span.decision,
                        "security_score": span.security_score,
                        "max_severity": _severity_name(max(f.severity for f in severe)),
                        "finding_types": sorted({f.type for f in severe}),
                    }
                )


def generate_report(
    ctx: AdminContext,
    report_type: str,
    start: float,
    end: float,
    tenant_id: str | None,
    *,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The content of a report over [start, end) (unix seconds), read from ctx's stores."""
    if report_type not in ("soc2", "gdpr", "hipaa"):
        raise ValueError(f"unknown report type {report_type!r}")
    config = ctx.config()
    traffic = _Traffic()
    oldest: float | None = None
    if ctx.store is not None:
        for span in iter_spans(ctx.store, start, end, tenant_id, progress):
            traffic.add(span)
        oldest = oldest_trace_at(ctx.store, tenant_id)
    events = sorted(
        (
            _event_view(e)
            for e in _in_period(ctx.metadata, AUDIT_KIND, "timestamp", start, end, tenant_id)
        ),
        key=lambda e: (e["timestamp"], str(e["id"])),
    )
    access = [e for e in events if str(e["action"]).startswith(_ACCESS_PREFIXES)]
    changes = [e for e in events if str(e["action"]).startswith(_CHANGE_PREFIXES)]
    alerts = _in_period(ctx.metadata, ALERT_KIND, "created_at", start, end, tenant_id)
    retention_days = config.storage.retention_days
    retention = {
        "trace_storage_enabled": ctx.store is not None,
        "retention_days": retention_days,
        "capture_content": config.storage.capture_content,
        "pii_action": config.pii.action,
        "pii_reversible": config.pii.reversible,
        "oldest_trace_at": _iso(oldest) if oldest is not None else None,
        # Purging runs hourly: allow that much before calling retention overdue.
        "oldest_trace_within_retention": (
            None
            if oldest is None or retention_days is None
            else time.time() - oldest <= retention_days * 86400 + 3600
        ),
    }
    pii = {
        "total": sum(traffic.pii_by_type.values()),
        "by_type": _ranked(traffic.pii_by_type),
        "by_direction": _ranked(traffic.pii_by_direction),
        "requests_with_pii": traffic.requests_with_pii,
    }
    content: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "report_type": report_type,
        "generated_at": now_iso(),
        "period": {"start": _iso(start), "end": _iso(end)},
        "tenant_id": tenant_id,
        "summary": {
            "requests": traffic.requests,
            "blocked": traffic.blocked,
            "flagged": traffic.decisions["flagged"],
            "redacted": traffic.decisions["redacted"],
            "findings_total": traffic.findings,
            "high_or_critical_findings": traffic.high_or_critical,
            "decisions": _ranked(traffic.decisions),
        },
        "findings_by_type": _ranked(traffic.by_type),
        "findings_by_category": _ranked(traffic.by_category),
        "findings_by_severity": dict(traffic.by_severity),
        "pii_detections": pii,
        "audit_events": _event_section(events),
        "access_to_keys_and_tenants": _event_section(access),
        "retention": retention,
    }
    if report_type == "soc2":
        content["soc2"] = {
            "access_control": {
                "key_and_tenant_events": _ranked(Counter(str(e["action"]) for e in access)),
                "keys_created": sum(e["action"] == "api_key.create" for e in access),
                "keys_revoked": sum(e["action"] == "api_key.revoke" for e in access),
                "actors": sorted({str(e["actor_key_id"]) for e in events}),
                "authentication_required": config.auth.enabled,
            },
            "monitoring": {
                "security_analysis_enabled": config.enable_security_analysis,
                "enforcement_mode": config.enforcement.mode,
                "findings_total": traffic.findings,
                "high_or_critical_findings": traffic.high_or_critical,
                "blocked_requests": traffic.blocked,
                "flagged_requests": traffic.decisions["flagged"],
                "alert_events": len(alerts),
                "alerts_by_type": _ranked(Counter(str(a.get("type")) for a in alerts)),
            },
            "change_management": _event_section(changes),
        }
    elif report_type == "gdpr":
        content["gdpr"] = {
            "processing_records": {
                "requests_processed": traffic.requests,
                "requests_by_tenant": _ranked(traffic.by_tenant),
                "requests_with_pii": traffic.requests_with_pii,
                "pii_detected": pii["total"],
                "pii_by_type": pii["by_type"],
                "requests_redacted": traffic.decisions["redacted"],
                "pii_action": config.pii.action,
                "content_capture": config.storage.capture_content,
            },
            "retention": retention,
        }
    else:
        content["hipaa"] = {
            "access_tracking": {
                "audit_events": len(events),
                "actors": sorted({str(e["actor_key_id"]) for e in events}),
                "key_and_tenant_events": _ranked(Counter(str(e["action"]) for e in access)),
                "requests_by_tenant": _ranked(traffic.by_tenant),
            },
            "security_incidents": {
                "total": traffic.incident_count,
                "items": traffic.incidents,
                "truncated": traffic.incident_count > len(traffic.incidents),
            },
            "pii_detected": pii["total"],
        }
    return content


# --- background job -------------------------------------------------------------------------


def recover_interrupted(metadata: MetadataStore, now: float | None = None) -> list[str]:
    """Fail pending/running reports no live process is working on; their ids."""
    now = time.time() if now is None else now
    failed = []
    for doc in metadata.list(REPORT_KIND):
        if doc.get("status") not in ("pending", "running"):
            continue
        worker = str(doc.get("worker") or "")
        heartbeat = doc.get("heartbeat_at")
        stale = not isinstance(heartbeat, int | float) or now - heartbeat > STALE_AFTER_S
        if worker.rpartition(":")[0] == _HOST or stale:
            doc.update(status="failed", error=INTERRUPTED, completed_at=now_iso())
            metadata.put(REPORT_KIND, str(doc["id"]), doc, doc.get("tenant_id"))
            failed.append(str(doc["id"]))
    if failed:
        log.warning("marked %d interrupted report(s) as failed: %s", len(failed), failed)
    return failed


class ReportWorker:
    """One daemon thread that runs queued reports in order; started on demand."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, report_id: str) -> bool:
        """Queue a report; False when MAX_QUEUED are already waiting."""
        with self._lock:
            if self._queue.qsize() >= MAX_QUEUED:
                return False
            self._queue.put(report_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="compliance-reports", daemon=True
                )
                self._thread.start()
        return True

    def _loop(self) -> None:
        while True:
            try:
                report_id = self._queue.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # submit() checks _thread under the same lock
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                self.run(report_id)
            except Exception:  # a bad document must not stop the reports queued behind it
                log.exception("report %s: worker error", report_id)

    def run(self, report_id: str) -> None:
        """Generate one report and store the outcome (blocking; the worker thread calls it)."""
        metadata = self.ctx.metadata
        doc = metadata.get(REPORT_KIND, report_id)
        if doc is None or doc.get("status") != "pending":
            return  # deleted, or failed by another replica's recovery while queued
        tenant = doc.get("tenant_id")
        last = time.monotonic()
        doc.update(status="running", started_at=now_iso(), heartbeat_at=time.time())
        metadata.put(REPORT_KIND, report_id, doc, tenant)

        def heartbeat() -> None:
            nonlocal last
            if time.monotonic() - last >= HEARTBEAT_EVERY_S:
                last = time.monotonic()
                doc["heartbeat_at"] = time.time()
                metadata.put(REPORT_KIND, report_id, doc, tenant)

        try:
            content = generate_report(
                self.ctx,
                str(doc["report_type"]),
                datetime.fromisoformat(doc["period_start"]).timestamp(),
                datetime.fromisoformat(doc["period_end"]).timestamp(),
                tenant,
                progress=heartbeat,
            )
        except Exception as exc:
            log.exception("report %s failed", report_id)
            message = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
            doc.update(status="failed", error=message, completed_at=now_iso())
        else:
            doc.update(status="completed", content=content, completed_at=now_iso())
        doc["heartbeat_at"] = time.time()
        metadata.put(REPORT_KIND, report_id, doc, tenant)


# --- routes ---------------------------------------------------------------------------------


def _info(doc: Document) -> Document:
    return {k: v for k, v in doc.items() if k != "content"}


def build_router(ctx: AdminContext) -> APIRouter:
    """The /api/v1/reports routes; fails reports a previous run left unfinished."""
    router = APIRouter(prefix="/api/v1/reports", tags=["reports"])
    recover_interrupted(ctx.metadata)
    worker = ReportWorker(ctx)
    worker_id = f"{_HOST}:{os.getpid()}"

    @router.post(
        "/generate",
        status_code=202,
        response_model=ReportInfo,
        responses=QUEUE_RESPONSES,
        summary="Start generating a compliance report",
    )
    def generate(
        body: ReportRequest, principal: Annotated[Principal, Depends(require(ctx, "admin"))]
    ) -> Document:
        """Queue a report; poll GET /api/v1/reports/{id} until completed or failed."""
        tenant_id = tenant_scope(principal, body.tenant_id)
        report_id = uuid.uuid4().hex
        doc: Document = {
            "id": report_id,
            "report_type": body.report_type,
            "status": "pending",
            "period_start": body.period_start.isoformat(),
            "period_end": body.period_end.isoformat(),
            "tenant_id": tenant_id,
            "created_at": now_iso(),
            "started_at": None,
            "completed_at": None,
            "error": None,
            "requested_by": principal.key_id,
            "worker": worker_id,
            "heartbeat_at": time.time(),
        }
        ctx.metadata.put(REPORT_KIND, report_id, doc, tenant_id)
        if not worker.submit(report_id):
            ctx.metadata.delete(REPORT_KIND, report_id)
            raise ApiError(
                429, "too_many_reports", f"{MAX_QUEUED} reports are waiting; retry later."
            )
        audit(
            ctx.metadata,
            principal,
            "report.generate",
            REPORT_KIND,
            report_id,
            tenant_id=tenant_id,
            details={
                "report_type": body.report_type,
                "period_start": doc["period_start"],
                "period_end": doc["period_end"],
            },
        )
        return doc

    @router.get("", response_model=ReportList, responses=ERROR_RESPONSES, summary="List reports")
    def list_reports(
        principal: Annotated[Principal, Depends(require(ctx, "viewer"))],
        report_type: ReportType | None = None,
        status: ReportStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Reports without content, newest first; a tenant-scoped key sees its tenant's only."""
        scope = principal.tenant_id
        docs = [
            _info(d)
            for d in ctx.metadata.list(REPORT_KIND, scope)
            if (scope is None or d.get("tenant_id") == scope)
            and (report_type is None or d.get("report_type") == report_type)
            and (status is None or d.get("status") == status)
        ]
        # By creation, not last update: a status change must not reshuffle pages.
        docs.sort(key=lambda d: (d.get("created_at", ""), d.get("id", "")), reverse=True)
        return page(docs, limit, offset)

    @router.get(
        "/{report_id}", response_model=Report, responses=ERROR_RESPONSES, summary="Get a report"
    )
    def get_report(
        report_id: str, principal: Annotated[Principal, Depends(require(ctx, "viewer"))]
    ) -> Document:
        """One report, with content once completed; 404 when unknown or another tenant's."""
        doc = ctx.metadata.get(REPORT_KIND, report_id)
        if doc is None:
            raise ApiError(404, "not_found", "Not found.")
        check_tenant(principal, doc.get("tenant_id"))
        return doc

    return router
