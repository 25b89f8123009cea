"""Alert channels: real local receivers for each payload, thresholds, cooldown and failures."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from extproc.config import AlertChannelConfig, AlertsConfig
from extproc.detect.findings import Category, Finding, Severity
from extproc.policy.limits import BudgetEvent
from extproc.telemetry import webhooks
from extproc.telemetry.alerts import AlertEvent, AlertManager, budget_alert
from extproc.telemetry.metrics import Metrics
from tests.receiver import Receiver

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


class Clock:
    """A settable clock for cooldowns."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_BASE_S", 0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def event(
    type: str = "prompt_injection",
    severity: Severity = Severity.HIGH,
    score: int = 90,
    *,
    kind: str = "finding",
    tenant: str | None = "acme",
) -> AlertEvent:
    return AlertEvent(
        kind=kind,
        type=type,
        severity=severity,
        score=score,
        tenant_id=tenant,
        trace_id="trace-1",
        summary=f"{severity} {type} detected",
        details={"rule_id": "pi.1", "count": 1},
        timestamp=T0,
    )


def alerts(*channels: dict[str, Any], **settings: Any) -> AlertsConfig:
    return AlertsConfig(
        enabled=True,
        channels=[AlertChannelConfig(**channel) for channel in channels],
        **settings,
    )


def alert_count(metrics: Metrics, channel: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "extproc_alerts_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


async def test_webhook_channel_posts_the_event_as_json(receiver: Receiver) -> None:
    metrics = Metrics()
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem", "min_severity": "info"})
    manager = AlertManager(config, metrics)
    await manager.start()
    manager.submit(event())
    await manager.close(timeout=5)
    assert receiver.bodies("/siem") == [
        {
            "kind": "finding",
            "type": "prompt_injection",
            "severity": "high",
            "score": 90,
            "tenant_id": "acme",
            "trace_id": "trace-1",
            "summary": "high prompt_injection detected",
            "details": {"rule_id": "pi.1", "count": 1},
            "timestamp": "2023-11-14T22:13:20.250+00:00",
        }
    ]
    assert alert_count(metrics, "webhook", "sent") == 1
    status = manager.status()["channels"][0]
    assert status["sent"] == 1
    assert status["failed"] == 0
    assert status["last_error"] is None


async def test_slack_message_has_text_and_blocks_and_escapes_mrkdwn(receiver: Receiver) -> None:
    config = alerts({"type": "slack", "url": f"{receiver.base}/slack", "min_severity": "medium"})
    manager = AlertManager(config, Metrics())
    manager.submit(event(tenant="<!channel>"))
    await manager.close(timeout=5)
    [body] = receiver.bodies("/slack")
    assert body["text"] == "[HIGH] high prompt_injection detected"
    header, fields, context = body["blocks"]
    assert header["type"] == "section"
    assert header["text"]["type"] == "mrkdwn"
    assert "prompt_injection" in header["text"]["text"]
    assert fields["type"] == "section"
    texts = [field["text"] for field in fields["fields"]]
    assert "*Severity*\nHIGH" in texts
    assert "*Score*\n90" in texts
    assert "*Trace*\ntrace-1" in texts
    assert "*Tenant*\n&lt;!channel&gt;" in texts  # a tenant id cannot ping the channel
    assert "<!channel>" not in json.dumps(body)
    assert context["type"] == "context"
    assert "2023-11-14T22:13:20.250+00:00" in context["elements"][0]["text"]


async def test_pagerduty_gets_an_events_v2_trigger(receiver: Receiver) -> None:
    config = alerts(
        {"type": "pagerduty", "routing_key": "rk-123", "min_severity": "critical"},
        pagerduty_url=f"{receiver.base}/v2/enqueue",
    )
    manager = AlertManager(config, Metrics())
    manager.submit(event("secret_leak", Severity.CRITICAL, 95))
    await manager.close(timeout=5)
    assert receiver.bodies("/v2/enqueue") == [
        {
            "routing_key": "rk-123",
            "event_action": "trigger",
            "dedup_key": "secret_leak:acme",
            "payload": {
                "summary": "critical secret_leak detected",
                "source": "extproc",
                "severity": "critical",
                "timestamp": "2023-11-14T22:13:20.250+00:00",
                "class": "secret_leak",
                "custom_details": {
                    "kind": "finding",
                    "type": "secret_leak",
                    "score": 95,
                    "tenant_id": "acme",
                    "trace_id": "trace-1",
                    "rule_id": "pi.1",
                    "count": 1,
                },
            },
        }
    ]
    assert "rk-123" not in json.dumps(manager.status())  # the routing key is a secret


async def test_pagerduty_severity_mapping(receiver: Receiver) -> None:
    config = alerts(
        {"type": "pagerduty", "routing_key": "rk", "min_severity": "info"},
        pagerduty_url=f"{receiver.base}/pd",
        cooldown_seconds=0,
    )
    manager = AlertManager(config, Metrics())
    for severity in Severity:
        manager.submit(event(f"t{int(severity)}", severity))
    await manager.close(timeout=5)
    got = {body["dedup_key"]: body["payload"]["severity"] for body in receiver.bodies("/pd")}
    assert got == {
        "t0:acme": "info",
        "t1:acme": "info",
        "t2:acme": "warning",
        "t3:acme": "error",
        "t4:acme": "critical",
    }


async def test_thresholds_filter_per_channel(receiver: Receiver) -> None:
    metrics = Metrics()
    config = alerts(
        {
            "type": "slack",
            "url": f"{receiver.base}/slack",
            "min_severity": "medium",
            "min_security_score": 50,
        },
        {
            "type": "webhook",
            "url": f"{receiver.base}/siem",
            "min_severity": "high",
            "min_security_score": 70,
        },
    )
    manager = AlertManager(config, metrics)
    manager.submit(event("low_sev", Severity.LOW, 99))  # below both severities
    manager.submit(event("low_score", Severity.CRITICAL, 40))  # below both scores
    manager.submit(event("medium_60", Severity.MEDIUM, 60))  # slack only
    manager.submit(event("high_60", Severity.HIGH, 60))  # slack only (webhook needs 70)
    manager.submit(event("high_70", Severity.HIGH, 70))  # both
    await manager.close(timeout=5)
    assert sorted(body["text"] for body in receiver.bodies("/slack")) == [
        "[HIGH] high high_60 detected",
        "[HIGH] high high_70 detected",
        "[MEDIUM] medium medium_60 detected",
    ]
    assert [body["type"] for body in receiver.bodies("/siem")] == ["high_70"]
    # Filtered events are not alerts: nothing is counted for them.
    assert alert_count(metrics, "slack", "sent") == 3
    assert alert_count(metrics, "webhook", "sent") == 1
    assert alert_count(metrics, "webhook", "suppressed") == 0


async def test_legacy_webhook_url_is_a_channel_with_the_top_level_thresholds(
    receiver: Receiver,
) -> None:
    config = AlertsConfig(
        enabled=True,
        webhook_url=f"{receiver.base}/legacy",
        min_severity=Severity.HIGH,
        min_security_score=70,
        channels=[AlertChannelConfig(type="webhook", url=f"{receiver.base}/other")],
    )
    manager = AlertManager(config, Metrics())
    manager.submit(event("a", Severity.HIGH, 69))
    manager.submit(event("b", Severity.HIGH, 70))
    await manager.close(timeout=5)
    assert [body["type"] for body in receiver.bodies("/legacy")] == ["b"]
    assert sorted(body["type"] for body in receiver.bodies("/other")) == ["a", "b"]
    assert [c["name"] for c in manager.status()["channels"]] == ["webhook_url", "channels[0]"]


async def test_cooldown_per_channel_and_type(receiver: Receiver) -> None:
    metrics = Metrics()
    clock = Clock()
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem"}, cooldown_seconds=300)
    manager = AlertManager(config, metrics, clock=clock)
    manager.submit(event("prompt_injection"))
    clock.now += 10
    manager.submit(event("prompt_injection", tenant="other"))  # same type: suppressed
    manager.submit(event("jailbreak"))  # another type: sent
    clock.now += 299  # 309 s after the first: its cooldown is over
    manager.submit(event("prompt_injection"))
    manager.submit(event("jailbreak"))  # 299 s after its first: still suppressed
    await manager.close(timeout=5)
    assert sorted((b["type"], b["tenant_id"]) for b in receiver.bodies("/siem")) == [
        ("jailbreak", "acme"),
        ("prompt_injection", "acme"),
        ("prompt_injection", "acme"),
    ]
    status = manager.status()["channels"][0]
    assert (status["sent"], status["suppressed"]) == (3, 2)
    assert alert_count(metrics, "webhook", "suppressed") == 2


async def test_cooldown_is_per_channel(receiver: Receiver) -> None:
    config = alerts(
        {"type": "webhook", "url": f"{receiver.base}/high", "min_severity": "high"},
        {"type": "webhook", "url": f"{receiver.base}/low", "min_severity": "low"},
    )
    manager = AlertManager(config, Metrics(), clock=Clock())
    manager.submit(event("x", Severity.MEDIUM))  # only /low; it must not start /high's cooldown
    manager.submit(event("x", Severity.HIGH))
    await manager.close(timeout=5)
    assert len(receiver.bodies("/low")) == 1
    assert len(receiver.bodies("/high")) == 1


async def test_budget_and_anomaly_cooldowns_are_per_tenant(receiver: Receiver) -> None:
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem", "min_severity": "info"})
    manager = AlertManager(config, Metrics(), clock=Clock())
    manager.submit(event("cost_spike", kind="anomaly", tenant="a"))
    manager.submit(event("cost_spike", kind="anomaly", tenant="b"))
    manager.submit(event("cost_spike", kind="anomaly", tenant="a"))  # suppressed
    await manager.close(timeout=5)
    assert sorted(b["tenant_id"] for b in receiver.bodies("/siem")) == ["a", "b"]
    assert manager.status()["channels"][0]["suppressed"] == 1


async def test_zero_cooldown_sends_every_event(receiver: Receiver) -> None:
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem"}, cooldown_seconds=0)
    manager = AlertManager(config, Metrics(), clock=Clock())
    for _ in range(3):
        manager.submit(event())
    await manager.close(timeout=5)
    assert len(receiver.bodies("/siem")) == 3


async def test_email_is_skipped_logged_once_and_never_crashes(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    config = alerts(
        {"type": "email", "min_severity": "low"},
        {"type": "webhook", "url": f"{receiver.base}/siem", "min_severity": "low"},
    )
    with caplog.at_level(logging.WARNING, logger="extproc.alerts"):
        manager = AlertManager(config, metrics)
        manager.reconfigure(config)  # the same channel: not logged again
    assert sum("not implemented" in r.getMessage() for r in caplog.records) == 1
    await manager.start()
    manager.submit(event("a"))
    manager.submit(event("b"))
    manager.submit(event("c", Severity.INFO))  # below the threshold: not even skipped
    await manager.close(timeout=5)
    email, webhook = manager.status()["channels"]
    assert (email["type"], email["implemented"], email["skipped"]) == ("email", False, 2)
    assert email["sent"] == email["failed"] == 0
    assert alert_count(metrics, "email", "skipped") == 2
    assert webhook["sent"] == 2


async def test_failures_are_counted_and_never_raised(receiver: Receiver) -> None:
    metrics = Metrics()
    receiver.statuses = [500, 503]
    config = alerts(
        {"type": "webhook", "url": f"{receiver.base}/flaky", "min_severity": "info"},
        {"type": "slack", "url": "http://127.0.0.1:1/refused", "min_severity": "info"},
        max_retries=1,
        timeout_ms=2000,
    )
    manager = AlertManager(config, metrics)
    manager.submit(event())
    await manager.close(timeout=5)
    assert len(receiver.bodies("/flaky")) == 2  # first attempt + one retry
    webhook, slack = manager.status()["channels"]
    assert (webhook["failed"], webhook["retries"], webhook["last_error"]) == (1, 1, "HTTP 503")
    assert webhook["last_error_at"] is not None
    assert slack["failed"] == 1
    assert "refused" not in (slack["last_error"] or "")  # the error, not the URL
    assert alert_count(metrics, "webhook", "failed") == 1
    assert alert_count(metrics, "slack", "failed") == 1
    # The action-router webhook's own metrics are not touched by alert channels.
    assert metrics.registry.get_sample_value("extproc_webhook_deliveries_total", {}) is None


async def test_submit_survives_bad_events_and_odd_details(receiver: Receiver) -> None:
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem", "min_severity": "info"})
    manager = AlertManager(config, Metrics())
    broken = AlertEvent("finding", "x", None, 1, None, None, "s", {}, T0)  # type: ignore[arg-type]
    manager.submit(broken)  # logged, not raised
    odd = AlertEvent("finding", "y", Severity.HIGH, 90, None, None, "s", {"ids": {3}}, T0)
    manager.submit(odd)
    await manager.close(timeout=5)
    assert [b["details"] for b in receiver.bodies("/siem")] == [{"ids": "{3}"}]


async def test_findings_become_one_event_per_type(receiver: Receiver) -> None:
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem", "min_severity": "info"})
    manager = AlertManager(config, Metrics(), clock=Clock())

    def finding(type: str, severity: Severity, confidence: float, rule: str) -> Finding:
        return Finding(type, Category.PROMPT_INJECTION, severity, confidence, 0, 5, rule)

    manager.findings(
        [
            finding("prompt_injection", Severity.MEDIUM, 0.99, "pi.1"),
            finding("prompt_injection", Severity.HIGH, 0.7, "pi.2"),
            finding("prompt_injection", Severity.HIGH, 0.8, "pi.3"),
            finding("jailbreak", Severity.LOW, 0.5, "jb.1"),
        ],
        tenant_id="acme",
        trace_id="trace-9",
    )
    await manager.close(timeout=5)
    bodies = {b["type"]: b for b in receiver.bodies("/siem")}
    assert set(bodies) == {"prompt_injection", "jailbreak"}
    worst = bodies["prompt_injection"]
    assert (worst["severity"], worst["score"]) == ("high", 80)
    assert worst["details"]["rule_id"] == "pi.3"
    assert worst["details"]["count"] == 3
    assert (worst["tenant_id"], worst["trace_id"], worst["kind"]) == ("acme", "trace-9", "finding")
    assert worst["timestamp"] == "2023-11-14T22:13:20.250+00:00"
    assert bodies["jailbreak"]["score"] == 50


async def test_disabled_manager_is_a_no_op(receiver: Receiver) -> None:
    config = AlertsConfig(
        enabled=False, channels=[AlertChannelConfig(type="webhook", url=f"{receiver.base}/x")]
    )
    manager = AlertManager(config, Metrics())
    manager.submit(event())
    manager.findings(
        [Finding("pii", Category.PII, Severity.CRITICAL, 1.0, 0, 1, "pii.1")],
        tenant_id=None,
        trace_id=None,
    )
    await manager.close(timeout=1)
    assert receiver.received == []
    assert manager.status() == {"enabled": False, "cooldown_seconds": 300, "channels": []}


async def test_reconfigure_keeps_unchanged_channels_and_retires_removed_ones(
    receiver: Receiver,
) -> None:
    clock = Clock()
    keep = {"type": "webhook", "url": f"{receiver.base}/keep", "min_severity": "high"}
    drop = {"type": "webhook", "url": f"{receiver.base}/drop"}
    manager = AlertManager(alerts(keep, drop), Metrics(), clock=clock)
    manager.submit(event("a"))
    # Thresholds change, the channel stays: counters and cooldowns survive.
    manager.reconfigure(alerts({**keep, "min_severity": "low"}))
    [status] = manager.status()["channels"]
    assert status["min_severity"] == "low"
    manager.submit(event("a"))  # still in its cooldown
    manager.submit(event("b", Severity.MEDIUM))  # passes the new threshold
    await manager.close(timeout=5)
    assert sorted(b["type"] for b in receiver.bodies("/keep")) == ["a", "b"]
    assert [b["type"] for b in receiver.bodies("/drop")] == ["a"]  # delivered while retiring
    [status] = manager.status()["channels"]
    assert (status["sent"], status["suppressed"]) == (2, 1)


async def test_budget_alert_event(receiver: Receiver) -> None:
    crossing = BudgetEvent("tenant", "acme", None, "daily", "soft", 80.5, 80.0)
    soft = budget_alert(crossing, trace_id="t", timestamp=T0)
    assert (soft.kind, soft.type, soft.severity, soft.score) == (
        "budget",
        "budget_soft_limit",
        Severity.HIGH,
        100,
    )
    assert soft.summary == "soft daily budget of $80.00 reached for acme: $80.50 spent"
    hard = budget_alert(
        BudgetEvent("agent", "acme", "bot", "monthly", "hard", 101.0, 100.0),
        trace_id=None,
        timestamp=T0,
    )
    assert hard.severity is Severity.CRITICAL
    assert "agent bot" in hard.summary
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem"})
    manager = AlertManager(config, Metrics())
    manager.submit(soft)
    await manager.close(timeout=5)
    [body] = receiver.bodies("/siem")
    assert body["details"]["limit_usd"] == 80.0
    assert body["details"]["window"] == "daily"


async def test_closed_manager_ignores_events(receiver: Receiver) -> None:
    config = alerts({"type": "webhook", "url": f"{receiver.base}/siem"})
    manager = AlertManager(config, Metrics())
    await manager.close(timeout=1)
    manager.submit(event())
    assert receiver.received == []
    assert manager.status()["enabled"] is False
