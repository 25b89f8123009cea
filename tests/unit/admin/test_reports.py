"""Compliance reports: background generation, content over the period, access, recovery."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from extproc.admin import reports
from extproc.admin.audit import AUDIT_KIND
from extproc.admin.auth import KEY_KIND, hash_key, key_id_of
from extproc.admin.context import AdminContext
from extproc.admin.errors import install_error_handlers
from extproc.admin.reports import REPORT_KIND, build_router, generate_report, iter_spans
from extproc.config import Config, load_config
from extproc.storage.metadata import MemoryMetadataStore, SqliteMetadataStore
from extproc.storage.model import SpanRecord, StoredFinding
from extproc.storage.stores import MemoryTraceStore, SpanQuery, SqliteTraceStore, TraceStore
from extproc.telemetry.metrics import Metrics

ADMIN_KEY = "x" * 32
ROOT = {"Authorization": f"Bearer {ADMIN_KEY}"}
GENERATE = "/api/v1/reports/generate"
T0 = 1_700_000_000.0  # the report period is [T0, T0 + 1 h)
END = T0 + 3600
MARKER = "PROMPT-MARKER-7c1e"  # in every stored prompt/response; must never reach a report
PERIOD = {"period_start": datetime.fromtimestamp(T0, UTC).isoformat(), "period_end": END}


def finding(type_: str, category: str, severity: int, where: str = "request") -> StoredFinding:
    return StoredFinding(
        type_, category, severity, 0.9, f"{where}:messages[0].content:0-5", "r", "regex"
    )


def span(n: int, at: float, tenant: str, decision: str, *findings: StoredFinding) -> SpanRecord:
    return SpanRecord(
        trace_id=f"t{n}",
        span_id=f"t{n}",
        tenant_id=tenant,
        agent_id=None,
        created_at=at,
        operation_name="chat_completion",
        decision=decision,
        security_score=75 if findings else 0,
        prompt=f"my email is a@b.example {MARKER}",
        response=f"ok {MARKER}",
        findings=findings,
    )


SPANS = [
    span(1, T0 + 10, "acme", "allowed", finding("email", "pii", 2), finding("ssn", "pii", 3)),
    span(2, T0 + 20, "acme", "blocked", finding("prompt_injection", "prompt_injection", 3)),
    span(3, T0 + 30, "globex", "redacted", finding("email", "pii", 2, "response")),
    span(4, T0 + 40, "globex", "allowed"),
    span(7, T0 + 50, "globex", "rate_limited"),  # refused by the gate: counts as blocked
    span(5, T0 - 100, "acme", "blocked", finding("phone_number", "pii", 2)),  # before
    span(6, END, "acme", "blocked", finding("jailbreak", "jailbreak", 4)),  # end is exclusive
]


def audit_event(
    n: int, at: float, action: str, tenant: str | None, **details: Any
) -> dict[str, Any]:
    return {
        "id": f"e{n}",
        "timestamp": at,
        "actor_key_id": "bootstrap",
        "actor_role": "admin",
        "action": action,
        "target_kind": action.split(".")[0],
        "target_id": f"x{n}",
        "tenant_id": tenant,
        "details": details,
    }


EVENTS = [
    audit_event(1, T0 + 5, "api_key.create", "acme", name="ci", role="viewer"),
    audit_event(2, T0 + 6, "tenant.create", "globex", name="Globex"),
    audit_event(3, T0 + 7, "feature_flags.update", None, key_hash="SECRET-HASH-99", after={}),
    audit_event(4, T0 - 50, "api_key.revoke", "acme"),  # before the period
]


def auth_config() -> Config:
    return load_config(
        environ={}, overrides=[("auth.enabled", True), ("auth.admin_key", ADMIN_KEY)]
    )


def filled_metadata() -> MemoryMetadataStore:
    metadata = MemoryMetadataStore()
    for event in EVENTS:
        metadata.put(AUDIT_KIND, event["id"], event, event["tenant_id"])
    return metadata


def filled_store() -> MemoryTraceStore:
    store = MemoryTraceStore()
    store.write(SPANS)
    return store


def make_ctx(
    metadata: MemoryMetadataStore | None = None, store: TraceStore | None = None
) -> AdminContext:
    cfg = auth_config()
    return AdminContext(
        config=lambda: cfg,
        metrics=Metrics(),
        health=lambda: {},
        metadata=metadata if metadata is not None else filled_metadata(),
        store=store,
    )


def make_client(ctx: AdminContext) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(ctx))
    return TestClient(app)


@pytest.fixture
def ctx() -> AdminContext:
    return make_ctx(store=filled_store())


@pytest.fixture
def client(ctx: AdminContext) -> TestClient:
    return make_client(ctx)


def api_key(ctx: AdminContext, role: str, tenant: str | None = None) -> dict[str, str]:
    """Store a key of `role` (scoped to `tenant`) and return its Authorization header."""
    key = f"llmt_{role}_{tenant}_" + "k" * 20
    digest = hash_key(key)
    doc = {"id": key_id_of(digest), "role": role, "tenant_id": tenant, "key_hash": digest}
    ctx.metadata.put(KEY_KIND, doc["id"], {**doc, "revoked_at": None}, tenant)
    return {"Authorization": f"Bearer {key}"}


def start(
    client: TestClient, report_type: str, headers: dict[str, str] = ROOT, **extra: Any
) -> str:
    r = client.post(GENERATE, json={"report_type": report_type, **PERIOD, **extra}, headers=headers)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending" and body["report_type"] == report_type
    return str(body["id"])


def wait(client: TestClient, report_id: str, status: str = "completed") -> dict[str, Any]:
    """Poll until the report reaches `status` (failing fast on another final status)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = client.get(f"/api/v1/reports/{report_id}", headers=ROOT)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        if doc["status"] == status:
            return doc
        assert doc["status"] not in {"completed", "failed"} - {status}, doc
        time.sleep(0.01)
    raise AssertionError(f"report {report_id} never reached {status}")


def test_soc2_report_counts_only_the_period(client: TestClient, ctx: AdminContext) -> None:
    doc = wait(client, start(client, "soc2"))
    content = doc["content"]
    assert content["report_version"] == reports.REPORT_VERSION and content["generated_at"]
    assert content["period"] == {
        "start": "2023-11-14T22:13:20+00:00",
        "end": "2023-11-14T23:13:20+00:00",
    }
    assert content["summary"] == {
        "requests": 5,
        "blocked": 2,
        "flagged": 0,
        "redacted": 1,
        "findings_total": 4,
        "high_or_critical_findings": 2,
        "decisions": {"allowed": 2, "blocked": 1, "rate_limited": 1, "redacted": 1},
    }
    assert content["findings_by_type"] == {"email": 2, "prompt_injection": 1, "ssn": 1}
    assert content["findings_by_severity"] == {
        "info": 0,
        "low": 0,
        "medium": 2,
        "high": 2,
        "critical": 0,
    }
    assert content["pii_detections"] == {
        "total": 3,
        "by_type": {"email": 2, "ssn": 1},
        "by_direction": {"request": 2, "response": 1},
        "requests_with_pii": 2,
    }
    audit = content["audit_events"]
    assert audit["total"] == 3 and audit["truncated"] is False
    assert [e["id"] for e in audit["events"]] == ["e1", "e2", "e3"]
    assert content["access_to_keys_and_tenants"]["by_action"] == {
        "api_key.create": 1,
        "tenant.create": 1,
    }
    soc2 = content["soc2"]
    assert soc2["access_control"]["keys_created"] == 1
    assert soc2["monitoring"]["blocked_requests"] == 2
    assert soc2["change_management"]["by_action"] == {"feature_flags.update": 1}
    retention = content["retention"]
    assert retention["oldest_trace_at"] == datetime.fromtimestamp(T0 - 100, UTC).isoformat()
    assert retention["retention_days"] == 30 and retention["capture_content"] == "redacted"
    # Neither the answer nor the stored document holds text or key material.
    stored = orjson.dumps(ctx.metadata.list(REPORT_KIND)).decode()
    for text in (orjson.dumps(doc).decode(), stored):
        assert MARKER not in text and "a@b.example" not in text
        assert "SECRET-HASH-99" not in text
    # Generating is itself audited.
    actions = [e["action"] for e in ctx.metadata.list(AUDIT_KIND)]
    assert "report.generate" in actions


def test_tenant_gdpr_report_counts_that_tenant_only(client: TestClient) -> None:
    doc = wait(client, start(client, "gdpr", tenant_id="acme"))
    assert doc["tenant_id"] == "acme"
    content = doc["content"]
    assert content["summary"]["requests"] == 2
    assert content["pii_detections"]["by_type"] == {"email": 1, "ssn": 1}
    records = content["gdpr"]["processing_records"]
    assert records["requests_processed"] == 2 and records["pii_detected"] == 2
    assert records["requests_by_tenant"] == {"acme": 2}
    assert records["content_capture"] == "redacted" and records["pii_action"] == "alert_only"
    # Audit events of other tenants (and unowned ones) are not the tenant's.
    assert [e["id"] for e in content["audit_events"]["events"]] == ["e1"]
    assert "soc2" not in content and "hipaa" not in content


def test_hipaa_report_lists_blocked_severe_requests(client: TestClient) -> None:
    content = wait(client, start(client, "hipaa"))["content"]
    incidents = content["hipaa"]["security_incidents"]
    assert incidents["total"] == 1 and incidents["truncated"] is False
    (item,) = incidents["items"]
    assert item["trace_id"] == "t2" and item["finding_types"] == ["prompt_injection"]
    assert item["max_severity"] == "high"
    assert content["hipaa"]["access_tracking"]["audit_events"] == 3


def test_status_goes_pending_running_completed() -> None:
    release = threading.Event()

    class SlowStore(MemoryTraceStore):
        def query(self, query: SpanQuery) -> list[SpanRecord]:
            release.wait(10)
            return super().query(query)

    client = make_client(make_ctx(store=SlowStore()))
    report_id = start(client, "soc2")
    running = wait(client, report_id, "running")
    assert running["content"] is None and running["started_at"] is not None
    release.set()
    done = wait(client, report_id)
    assert done["completed_at"] is not None and done["error"] is None


def test_unix_seconds_and_naive_iso_are_utc(client: TestClient) -> None:
    body = {"report_type": "gdpr", "period_start": int(T0), "period_end": "2023-11-14T23:13:20"}
    r = client.post(GENERATE, json=body, headers=ROOT)
    assert r.status_code == 202, r.text
    got = r.json()
    assert datetime.fromisoformat(got["period_start"].replace("Z", "+00:00")).timestamp() == T0
    assert datetime.fromisoformat(got["period_end"].replace("Z", "+00:00")).timestamp() == END
    assert wait(client, got["id"])["content"]["summary"]["requests"] == 5


@pytest.mark.parametrize(
    "body",
    [
        {"report_type": "pci", **PERIOD},
        {"report_type": "soc2", "period_start": END, "period_end": T0},
        {"report_type": "soc2", "period_start": T0, "period_end": T0},
        {"report_type": "soc2", "period_start": T0, "period_end": time.time() + 3 * 86400},
        {"report_type": "soc2", "period_start": "yesterday", "period_end": END},
        {"report_type": "soc2", "period_start": T0},
        {"report_type": "soc2", **PERIOD, "tenant_id": "bad id/with slash"},
        {"report_type": "soc2", **PERIOD, "format": "pdf"},
    ],
)
def test_invalid_requests_are_422(client: TestClient, body: dict[str, Any]) -> None:
    r = client.post(GENERATE, json=body, headers=ROOT)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_parameters" and error["message"]
    assert client.get("/api/v1/reports", headers=ROOT).json()["total"] == 0


def test_roles(client: TestClient, ctx: AdminContext) -> None:
    viewer = api_key(ctx, "viewer")
    operator = api_key(ctx, "operator")
    for headers in (viewer, operator):
        r = client.post(GENERATE, json={"report_type": "soc2", **PERIOD}, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.post(GENERATE, json={"report_type": "soc2", **PERIOD}).status_code == 401
    report_id = start(client, "soc2")
    assert client.get("/api/v1/reports", headers=viewer).json()["total"] == 1
    assert client.get(f"/api/v1/reports/{report_id}", headers=viewer).status_code == 200
    assert client.get("/api/v1/reports").status_code == 401


def test_scoped_keys_see_their_tenant_only(client: TestClient, ctx: AdminContext) -> None:
    acme_viewer = api_key(ctx, "viewer", "acme")
    acme_admin = api_key(ctx, "admin", "acme")
    everyone = start(client, "soc2")
    globex = start(client, "soc2", tenant_id="globex")
    own = start(client, "gdpr", headers=acme_admin)  # no tenant given: held to acme
    listed = client.get("/api/v1/reports", headers=acme_viewer).json()
    assert [i["id"] for i in listed["items"]] == [own] and listed["total"] == 1
    assert listed["items"][0]["tenant_id"] == "acme"
    for other in (everyone, globex):
        r = client.get(f"/api/v1/reports/{other}", headers=acme_viewer)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    content = wait(client, own)["content"]
    assert content["tenant_id"] == "acme" and content["summary"]["requests"] == 2
    r = client.post(
        GENERATE, json={"report_type": "soc2", **PERIOD, "tenant_id": "globex"}, headers=acme_admin
    )
    assert r.status_code == 403


def test_list_filters_paginates_and_omits_content(client: TestClient) -> None:
    ids = [start(client, t) for t in ("soc2", "gdpr", "soc2")]
    for report_id in ids:
        wait(client, report_id)
    page = client.get("/api/v1/reports?limit=2&offset=0", headers=ROOT).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [i["id"] for i in page["items"]] == ids[::-1][:2]
    assert all("content" not in i for i in page["items"])
    rest = client.get("/api/v1/reports?limit=2&offset=2", headers=ROOT).json()
    assert [i["id"] for i in rest["items"]] == [ids[0]]
    soc2 = client.get("/api/v1/reports?report_type=soc2&status=completed", headers=ROOT).json()
    assert soc2["total"] == 2
    assert client.get("/api/v1/reports?status=failed", headers=ROOT).json()["total"] == 0
    assert client.get("/api/v1/reports?status=bogus", headers=ROOT).status_code == 422
    assert client.get("/api/v1/reports?limit=0", headers=ROOT).status_code == 422


def test_unknown_report_is_404(client: TestClient) -> None:
    r = client.get("/api/v1/reports/nope", headers=ROOT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_failing_store_fails_the_report() -> None:
    class BrokenStore(MemoryTraceStore):
        def query(self, query: SpanQuery) -> list[SpanRecord]:
            raise RuntimeError("database is gone")

    client = make_client(make_ctx(store=BrokenStore()))
    doc = wait(client, start(client, "hipaa"), "failed")
    assert doc["error"] == "RuntimeError: database is gone"
    assert doc["content"] is None and doc["completed_at"] is not None
    # The worker survives a failure: the next report still runs.
    assert wait(client, start(client, "gdpr"), "failed")["status"] == "failed"


def test_restart_fails_interrupted_reports() -> None:
    metadata = filled_metadata()
    now = time.time()

    def report(id_: str, status: str, worker: str, heartbeat: float) -> None:
        doc = {
            "id": id_,
            "report_type": "soc2",
            "status": status,
            "period_start": "2023-11-14T22:13:20+00:00",
            "period_end": "2023-11-14T23:13:20+00:00",
            "tenant_id": None,
            "created_at": "2023-11-15T00:00:00+00:00",
            "worker": worker,
            "heartbeat_at": heartbeat,
        }
        metadata.put(REPORT_KIND, id_, doc)

    report("mine-running", "running", f"{reports._HOST}:1", now)
    report("mine-pending", "pending", f"{reports._HOST}:1", now)
    report("dead-replica", "running", "other-host:7", now - reports.STALE_AFTER_S - 1)
    report("live-replica", "running", "other-host:8", now)
    report("done", "completed", f"{reports._HOST}:1", now - 10_000)
    client = make_client(make_ctx(metadata, filled_store()))

    def status(id_: str) -> tuple[str, str | None]:
        doc = client.get(f"/api/v1/reports/{id_}", headers=ROOT).json()
        return doc["status"], doc["error"]

    for id_ in ("mine-running", "mine-pending", "dead-replica"):
        assert status(id_) == ("failed", "interrupted by restart")
    assert status("live-replica") == ("running", None)
    assert status("done") == ("completed", None)


def test_iter_spans_returns_each_span_once_across_tied_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reports, "PAGE", 2)
    store = MemoryTraceStore()
    # Five spans share one timestamp: they straddle several page boundaries.
    times = [T0 + 1, T0 + 2, T0 + 2, T0 + 2, T0 + 2, T0 + 2, T0 + 3, T0 + 4, T0 - 1, END]
    store.write([span(i, at, "acme", "allowed") for i, at in enumerate(times)])
    got = [s.span_id for s in iter_spans(store, T0, END, None)]
    assert sorted(got) == sorted(f"t{i}" for i in range(8)) and len(got) == 8


class CappedStore(MemoryTraceStore):
    """A store that returns at most 3 rows whatever the limit asked."""

    def query(self, query: SpanQuery) -> list[SpanRecord]:
        return super().query(query)[:3]


def test_iter_spans_tolerates_a_store_capping_limit() -> None:
    store = CappedStore()
    store.write([span(i, T0 + i, "acme", "allowed") for i in range(10)])
    assert len(list(iter_spans(store, T0, END, None))) == 10


def test_oldest_trace_at_is_found_to_the_second() -> None:
    store = MemoryTraceStore()
    assert reports.oldest_trace_at(store, None) is None
    store.write([span(1, T0 + 0.25, "a", "allowed"), span(2, T0 + 500, "b", "allowed")])
    found = reports.oldest_trace_at(store, None)
    assert found is not None and abs(found - (T0 + 0.25)) <= 1.0
    assert reports.oldest_trace_at(store, "b") == T0 + 500


def test_report_without_trace_storage_has_audit_only() -> None:
    content = generate_report(make_ctx(store=None), "soc2", T0, END, None)
    assert content["summary"]["requests"] == 0
    assert content["retention"]["trace_storage_enabled"] is False
    assert content["retention"]["oldest_trace_at"] is None
    assert content["audit_events"]["total"] == 3


def test_audit_event_lists_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_LISTED_EVENTS", 2)
    section = generate_report(make_ctx(store=None), "soc2", T0, END, None)["audit_events"]
    assert section["total"] == 3 and len(section["events"]) == 2 and section["truncated"]


def test_generate_report_over_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "extproc.db"
    store = SqliteTraceStore(path)
    metadata = SqliteMetadataStore(path)
    try:
        store.write(SPANS)
        for event in EVENTS:
            metadata.put(AUDIT_KIND, event["id"], event, event["tenant_id"])
        cfg = auth_config()
        ctx = AdminContext(
            config=lambda: cfg, metrics=Metrics(), health=lambda: {}, metadata=metadata, store=store
        )
        content = generate_report(ctx, "gdpr", T0, END, None)
        assert content["summary"]["requests"] == 5
        assert content["pii_detections"]["by_type"] == {"email": 2, "ssn": 1}
        assert content["audit_events"]["total"] == 3
        assert MARKER not in orjson.dumps(content).decode()
    finally:
        store.close()
        metadata.close()


def test_generate_report_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown report type"):
        generate_report(make_ctx(store=None), "pci", T0, END, None)


def test_full_queue_is_429(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_QUEUED", 0)
    r = client.post(GENERATE, json={"report_type": "soc2", **PERIOD}, headers=ROOT)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_reports"
    assert client.get("/api/v1/reports", headers=ROOT).json()["total"] == 0
