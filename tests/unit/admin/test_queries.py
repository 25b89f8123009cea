"""Read routes of the admin API over stored traces, on the memory and SQLite stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from extproc.admin.auth import KEY_KIND, hash_key, key_id_of
from extproc.admin.context import AdminContext
from extproc.admin.errors import install_error_handlers
from extproc.admin.queries import build_router, parse_time
from extproc.config import Config, load_config
from extproc.storage.metadata import MemoryMetadataStore
from extproc.storage.model import SpanRecord, StoredFinding, security_score
from extproc.storage.stores import MemoryTraceStore, SqliteTraceStore, TraceStore
from extproc.telemetry.metrics import Metrics

ADMIN_KEY = "x" * 32
ROOT = {"Authorization": f"Bearer {ADMIN_KEY}"}
T1_VIEWER = "llmt_scoped-viewer-of-t1"

EMAIL = StoredFinding("email", "pii", 2, 0.9, "request:messages[0].content:5-20", "pii.email", "re")
INJECTION = StoredFinding(
    "prompt_injection", "prompt_injection", 3, 0.9, "request:messages[0].content:0-9", "inj", "re"
)
SECRET = StoredFinding("aws_key", "secret", 4, 1.0, "response:output:3-23", "sec.aws", "re")
HOUR, DAY = 3600.0, 86400.0


def span(
    name: str,
    ago: float,
    *,
    tenant: str = "t1",
    agent: str = "a1",
    decision: str = "allowed",
    model: str | None = "gpt-4o",
    operation: str = "chat_completion",
    tokens: tuple[int | None, int | None] = (1, 1),
    cost: float | None = None,
    latency: float | None = None,
    ip: str | None = None,
    findings: tuple[StoredFinding, ...] = (),
) -> SpanRecord:
    return SpanRecord(
        trace_id=name,
        span_id=name,
        tenant_id=tenant,
        agent_id=agent,
        created_at=-ago,  # relative: shifted to the test's `now` when stored
        operation_name=operation,
        decision=decision,
        security_score=security_score(findings),
        model_name=model,
        dialect="openai",
        prompt=f"user: prompt of {name}",
        response=f"output: answer of {name}",
        status_code=403 if decision == "blocked" else 200,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        usage_source="usage",
        latency_ms=latency,
        estimated_cost_usd=cost,
        source_ip=ip,
        findings=findings,
    )


# Newest first within t1: s1 .. s6; s7 and s8 are t2's. Times are seconds before `now`.
FIXTURE = [
    span("s1", 10, tokens=(10, 20), cost=0.25, latency=100.0, ip="10.0.0.1"),
    span("s2", 20, decision="blocked", tokens=(5, 0), latency=5.0, ip="10.0.0.2",
         findings=(INJECTION,)),
    span("s3", 0.5 * HOUR, agent="a2", decision="flagged", model="claude", operation="messages",
         tokens=(100, 50), cost=0.5, latency=300.0, ip="10.0.0.2", findings=(EMAIL,)),
    span("s4", 2 * HOUR, agent="a2", decision="redacted", cost=0.125, latency=200.0,
         ip="10.0.0.3", findings=(EMAIL, SECRET)),
    span("s5", 2 * DAY, decision="rate_limited", model=None, tokens=(None, None), ip="10.0.0.9"),
    span("s6", 10 * DAY, cost=1.0, latency=50.0),
    span("s7", 60, tenant="t2", agent="b1", decision="blocked", model="gpt-4o-mini",
         tokens=(2, 0), cost=0.0625, latency=40.0, ip="10.0.0.2", findings=(INJECTION,)),
    span("s8", 40 * DAY, tenant="t2", agent="b1", cost=2.0),
]  # fmt: skip


def make_ctx(store: TraceStore | None, *, auth: bool = False) -> AdminContext:
    overrides: list[tuple[str, Any]] = (
        [("auth.enabled", True), ("auth.admin_key", ADMIN_KEY)] if auth else []
    )
    overrides += [
        ("cost_caps.default_budget_caps", [{"window": "daily", "hard_limit_usd": 5.0}]),
        (
            "cost_caps.agents",
            [{"agent_id": "a1", "budget_caps": [{"window": "hourly", "soft_limit_usd": 0.2}]}],
        ),
    ]
    cfg: Config = load_config(environ={}, overrides=overrides)
    metadata = MemoryMetadataStore()
    # A viewer key scoped to t1, stored as the key routes would store it.
    digest = hash_key(T1_VIEWER)
    doc = {
        "id": key_id_of(digest),
        "name": "t1 viewer",
        "role": "viewer",
        "tenant_id": "t1",
        "key_hash": digest,
    }
    metadata.put(KEY_KIND, key_id_of(digest), doc, "t1")
    return AdminContext(
        config=lambda: cfg, metrics=Metrics(), health=lambda: {}, metadata=metadata, store=store
    )


def make_client(ctx: AdminContext) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(ctx))
    return TestClient(app)


@pytest.fixture
def now() -> float:
    """The moment the fixture's times are relative to (taken per test: windows end at now)."""
    return time.time()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, now: float) -> Iterator[TraceStore]:
    opened: TraceStore = (
        MemoryTraceStore() if request.param == "memory" else SqliteTraceStore(tmp_path / "q.db")
    )
    opened.write([replace(s, created_at=now + s.created_at) for s in FIXTURE])
    yield opened
    opened.close()


@pytest.fixture
def client(store: TraceStore) -> TestClient:
    return make_client(make_ctx(store))


@pytest.fixture
def authed(store: TraceStore) -> TestClient:
    return make_client(make_ctx(store, auth=True))


def get(client: TestClient, url: str, status: int = 200, **params: Any) -> Any:
    r = client.get(url, params=params)
    assert r.status_code == status, r.text
    return r.json()


def trace_ids(page: dict[str, Any]) -> list[str]:
    return [item["trace_id"] for item in page["items"]]


# -- listings ----------------------------------------------------------------------------------
def test_list_traces_newest_first_without_text(client: TestClient, now: float) -> None:
    page = get(client, "/api/v1/traces", tenant_id="t1")
    assert trace_ids(page) == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert (page["total"], page["limit"], page["offset"]) == (6, 50, 0)
    first = page["items"][0]
    assert set(first) == {
        "trace_id",
        "tenant_id",
        "agent_id",
        "created_at",
        "model",
        "decision",
        "status_code",
        "security_score",
        "prompt_tokens",
        "completion_tokens",
        "estimated_cost_usd",
        "latency_ms",
        "finding_types",
    }
    assert first["created_at"] == datetime.fromtimestamp(now - 10, UTC).isoformat().replace(
        "+00:00", "Z"
    )
    assert page["items"][3]["finding_types"] == ["aws_key", "email"]
    assert get(client, "/api/v1/traces")["total"] == 8


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"agent_id": "a2"}, ["s3", "s4"]),
        ({"model": "claude"}, ["s3"]),
        ({"decision": "blocked"}, ["s2", "s7"]),
        ({"finding_type": "email"}, ["s3", "s4"]),
        ({"min_security_score": 60}, ["s2", "s7", "s4"]),
        ({"tenant_id": "t2", "decision": "blocked"}, ["s7"]),
        ({"since": 3 * HOUR, "until": 15}, ["s2", "s7", "s3", "s4"]),  # seconds ago
        ({"until": 20}, ["s7", "s3", "s4", "s5", "s6", "s8"]),  # until is exclusive
        ({"tenant_id": "nobody"}, []),
    ],
)
def test_list_filters(
    client: TestClient, now: float, params: dict[str, Any], expected: list[str]
) -> None:
    times = {k: now - v for k, v in params.items() if k in ("since", "until")}
    page = get(client, "/api/v1/traces", **{**params, **times})
    assert trace_ids(page) == expected
    assert page["total"] == len(expected)


def test_times_as_iso_8601(client: TestClient, now: float) -> None:
    since = datetime.fromtimestamp(now - 3 * HOUR, UTC)
    aware = get(client, "/api/v1/traces", tenant_id="t1", since=since.isoformat())
    naive = get(client, "/api/v1/traces", tenant_id="t1", since=since.replace(tzinfo=None))
    zulu = since.isoformat().replace("+00:00", "Z")
    assert trace_ids(aware) == trace_ids(naive) == ["s1", "s2", "s3", "s4"]
    assert trace_ids(get(client, "/api/v1/traces", tenant_id="t1", since=zulu)) == trace_ids(aware)
    assert parse_time("1718000000.5", "since") == 1718000000.5
    assert parse_time("2024-06-10T06:13:20+02:00", "since") == 1717992800.0


def test_pagination_totals(client: TestClient) -> None:
    page = get(client, "/api/v1/traces", tenant_id="t1", limit=2, offset=2)
    assert trace_ids(page) == ["s3", "s4"]
    assert (page["total"], page["limit"], page["offset"]) == (6, 2, 2)
    beyond = get(client, "/api/v1/traces", tenant_id="t1", offset=100)
    assert (beyond["items"], beyond["total"]) == ([], 6)


def test_list_spans_with_operation_name(client: TestClient) -> None:
    page = get(client, "/api/v1/spans", operation_name="messages")
    assert [item["span_id"] for item in page["items"]] == ["s3"]
    item = page["items"][0]
    assert item["operation_name"] == "messages" and "prompt" not in item
    assert get(client, "/api/v1/spans", tenant_id="t2")["total"] == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
        ({"since": "1e300"}, "out of range"),
        ({"since": "2024-02-01", "until": "2024-01-01"}, "since must not be after until"),
        ({"min_security_score": 101}, "min_security_score"),
        ({"tenant_id": "bad\x00id"}, "tenant_id"),
    ],
)
def test_invalid_parameters_are_422(
    client: TestClient, params: dict[str, Any], message: str
) -> None:
    body = get(client, "/api/v1/traces", 422, **params)
    assert body["error"]["code"] == "invalid_parameters"
    assert message in body["error"]["message"]


# -- one trace / span --------------------------------------------------------------------------
def test_get_trace_has_spans_findings_and_text(client: TestClient) -> None:
    trace = get(client, "/api/v1/traces/s4")
    assert (trace["trace_id"], trace["tenant_id"], trace["agent_id"]) == ("s4", "t1", "a2")
    (only,) = trace["spans"]
    assert only["prompt"] == "user: prompt of s4" and only["response"] == "output: answer of s4"
    assert only["findings"] == [
        {
            "type": "email",
            "category": "pii",
            "severity": "medium",
            "confidence": 0.9,
            "location": "request:messages[0].content:5-20",
            "rule_id": "pii.email",
            "detector": "re",
        },
        {
            "type": "aws_key",
            "category": "secret",
            "severity": "critical",
            "confidence": 1.0,
            "location": "response:output:3-23",
            "rule_id": "sec.aws",
            "detector": "re",
        },
    ]
    assert (only["dialect"], only["usage_source"], only["source_ip"]) == (
        "openai",
        "usage",
        "10.0.0.3",
    )
    assert get(client, "/api/v1/spans/s4") == only


def test_unknown_trace_and_span_are_404(client: TestClient) -> None:
    for url in ("/api/v1/traces/nope", "/api/v1/spans/nope"):
        assert get(client, url, 404)["error"]["code"] == "not_found"


# -- tenant scope ------------------------------------------------------------------------------
def test_scoped_key_sees_only_its_tenant(authed: TestClient) -> None:
    key = {"Authorization": f"Bearer {T1_VIEWER}"}
    assert authed.get("/api/v1/traces").status_code == 401
    mine = authed.get("/api/v1/traces", headers=key).json()
    assert mine["total"] == 6 and {i["tenant_id"] for i in mine["items"]} == {"t1"}
    # Another tenant's trace does not exist for this key; asking to list it is refused.
    for url in ("/api/v1/traces/s7", "/api/v1/spans/s7"):
        r = authed.get(url, headers=key)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert authed.get("/api/v1/traces/s1", headers=key).status_code == 200
    for url in (
        "/api/v1/traces",
        "/api/v1/spans",
        "/api/v1/stats",
        "/api/v1/security/findings",
        "/api/v1/costs/current",
        "/api/v1/actions/summary",
    ):
        r = authed.get(url, params={"tenant_id": "t2"}, headers=key)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden"), url
    assert authed.get("/api/v1/stats/global", headers=key).status_code == 403
    # Without tenant_id a scoped key gets its own tenant.
    stats = authed.get("/api/v1/stats", headers=key).json()
    assert (stats["tenant_id"], stats["requests"]) == ("t1", 4)
    findings = authed.get("/api/v1/security/findings", headers=key).json()
    assert {row["tenant_id"] for row in findings["items"]} == {"t1"}
    assert authed.get("/api/v1/stats/global", headers=ROOT).status_code == 200


# -- stats -------------------------------------------------------------------------------------
def test_tenant_stats_are_exact(client: TestClient, now: float) -> None:
    stats = get(client, "/api/v1/stats", tenant_id="t1")
    since, until = (datetime.fromisoformat(stats[k]).timestamp() for k in ("since", "until"))
    assert until - since == pytest.approx(DAY) and until >= now
    assert {k: v for k, v in stats.items() if k not in ("since", "until")} == {
        "tenant_id": "t1",
        "requests": 4,  # s1-s4 in the last 24 hours
        "by_decision": {"allowed": 1, "blocked": 1, "flagged": 1, "redacted": 1},
        "blocked": 1,
        "flagged": 1,
        "findings_by_type": {"prompt_injection": 1, "email": 2, "aws_key": 1},
        "tokens": {"prompt": 116, "completion": 71, "total": 187},
        "cost_usd": 0.875,
        "latency": {"p50_ms": 100.0, "p95_ms": 300.0},  # of 5, 100, 200, 300
        "top_models": [
            {
                "model": "gpt-4o",
                "requests": 3,
                "prompt_tokens": 16,
                "completion_tokens": 21,
                "cost_usd": 0.375,
            },
            {
                "model": "claude",
                "requests": 1,
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "cost_usd": 0.5,
            },
        ],
    }
    week = get(client, "/api/v1/stats", tenant_id="t1", since=now - 3 * DAY)
    assert (week["requests"], week["blocked"]) == (5, 2)  # s5 was rate limited
    assert week["by_decision"]["rate_limited"] == 1


def test_stats_need_a_tenant_or_a_valid_window(client: TestClient, now: float) -> None:
    body = get(client, "/api/v1/stats", 400)
    assert body["error"]["code"] == "bad_request" and "tenant_id" in body["error"]["message"]
    get(client, "/api/v1/stats", 422, tenant_id="t1", since=now, until=now - 1)


def test_global_stats(client: TestClient, now: float) -> None:
    stats = get(client, "/api/v1/stats/global")
    assert stats["tenant_id"] is None
    assert stats["requests"] == 5 and stats["blocked"] == 2
    assert stats["tenants"] == [
        {"tenant_id": "t1", "requests": 4},
        {"tenant_id": "t2", "requests": 1},
    ]
    month = get(client, "/api/v1/stats/global", since=now - 60 * DAY)
    assert month["tenants"] == [
        {"tenant_id": "t1", "requests": 6},
        {"tenant_id": "t2", "requests": 2},
    ]
    assert month["cost_usd"] == 3.9375


# -- findings ----------------------------------------------------------------------------------
def test_findings_rows_and_min_severity(client: TestClient) -> None:
    page = get(client, "/api/v1/security/findings", tenant_id="t1")
    assert [(r["trace_id"], r["type"]) for r in page["items"]] == [
        ("s2", "prompt_injection"),
        ("s3", "email"),
        ("s4", "email"),
        ("s4", "aws_key"),
    ]
    assert page["total"] == 4
    row = page["items"][0]
    assert row["severity"] == "high" and row["decision"] == "blocked" and row["agent_id"] == "a1"
    high = get(client, "/api/v1/security/findings", min_severity="high")
    assert [(r["trace_id"], r["severity"]) for r in high["items"]] == [
        ("s2", "high"),
        ("s7", "high"),
        ("s4", "critical"),
    ]
    critical = get(client, "/api/v1/security/findings", min_severity="critical")
    assert [r["type"] for r in critical["items"]] == ["aws_key"]
    pii = get(client, "/api/v1/security/findings", category="pii", limit=1, offset=1)
    assert [r["trace_id"] for r in pii["items"]] == ["s4"] and pii["total"] == 2
    typed = get(client, "/api/v1/security/findings", finding_type="prompt_injection")
    assert typed["total"] == 2
    err = get(client, "/api/v1/security/findings", 422, min_severity="severe")
    assert "min_severity" in err["error"]["message"]


# -- costs and actions -------------------------------------------------------------------------
def test_cost_windows(client: TestClient) -> None:
    costs = get(client, "/api/v1/costs/current", tenant_id="t1")
    windows = {w["window"]: w for w in costs["windows"]}
    assert list(windows) == ["hourly", "daily", "weekly", "monthly"]
    assert {name: (w["requests"], w["cost_usd"]) for name, w in windows.items()} == {
        "hourly": (3, 0.75),
        "daily": (4, 0.875),
        "weekly": (5, 0.875),
        "monthly": (6, 1.875),
    }
    assert windows["daily"]["hard_limit_usd"] == 5.0 and windows["hourly"]["hard_limit_usd"] is None
    assert windows["hourly"]["prompt_tokens"] == 115
    assert [(m["model"], m["requests"], m["cost_usd"]) for m in costs["models_today"]] == [
        ("gpt-4o", 3, 0.375),
        ("claude", 1, 0.5),
    ]
    assert costs["caps_enforced"] is False and costs["agent_id"] is None

    agent = get(client, "/api/v1/costs/current", tenant_id="t1", agent_id="a1")
    assert [(w["requests"], w["cost_usd"]) for w in agent["windows"]] == [
        (2, 0.25),
        (2, 0.25),
        (3, 0.25),
        (4, 1.25),
    ]
    # The agent's own caps, not the tenant defaults.
    assert [w["soft_limit_usd"] for w in agent["windows"]] == [0.2, None, None, None]
    assert get(client, "/api/v1/costs/current", 400)["error"]["code"] == "bad_request"


def test_actions_summary(client: TestClient, now: float) -> None:
    summary = get(client, "/api/v1/actions/summary", tenant_id="t1", since=now - 3 * DAY)
    assert summary["requests"] == 5
    assert summary["by_decision"] == {
        "allowed": 1,
        "blocked": 1,
        "flagged": 1,
        "redacted": 1,
        "rate_limited": 1,
    }
    assert (summary["blocked"], summary["flagged"]) == (2, 1)
    assert summary["findings_by_type"] == {"prompt_injection": 1, "email": 2, "aws_key": 1}
    assert summary["top_source_ips"] == [
        {"source_ip": "10.0.0.2", "requests": 2},
        {"source_ip": "10.0.0.9", "requests": 1},
    ]
    everyone = get(client, "/api/v1/actions/summary")
    assert everyone["tenant_id"] is None
    assert everyone["top_source_ips"] == [{"source_ip": "10.0.0.2", "requests": 3}]


# -- storage off -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/traces",
        "/api/v1/traces/s1",
        "/api/v1/spans",
        "/api/v1/spans/s1",
        "/api/v1/stats?tenant_id=t1",
        "/api/v1/stats/global",
        "/api/v1/security/findings",
        "/api/v1/costs/current?tenant_id=t1",
        "/api/v1/actions/summary",
    ],
)
def test_storage_disabled_is_503(url: str) -> None:
    r = make_client(make_ctx(None)).get(url)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "storage_disabled"


def test_store_failure_is_503(tmp_path: Path) -> None:
    broken = SqliteTraceStore(tmp_path / "b.db")
    broken._conn.execute("DROP TABLE findings")  # a read now fails inside SQLite
    r = make_client(make_ctx(broken)).get("/api/v1/security/findings")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "storage_unavailable")
    broken.close()
