"""Alerts on findings, budget crossings and anomalies, delivered off the request path.

`AlertManager.submit()` is what the request path calls: it filters the event per channel
(severity and score thresholds, then the cooldown) and queues a channel-specific payload on
that channel's `WebhookSender`, which retries and bounds every attempt. It never waits and
never raises: an alert receiver must not slow down or fail requests.

Channels: `webhook` (the event as JSON), `slack` (Incoming Webhook message), `pagerduty`
(Events API v2 trigger) and `email` (accepted, not implemented: counted as skipped). The
legacy `alerts.webhook_url` is one more webhook channel with the top-level thresholds.

Cooldown (`cooldown_seconds`): per channel and *dedup key*, the first event is sent and
repeats within the cooldown are suppressed (counted). For findings the key is the finding
type, as the config guide says ("if the same finding type fires multiple times within 5
minutes, only the first alert is sent"), so a probing attacker cannot flood a channel by
varying tenants. Budget and anomaly events are about one tenant and are rare by
construction, so their key is type *and* tenant: one tenant's spike does not hide another's.
The cooldown starts when an event is queued for the channel (a failed delivery still holds
it) and only events that pass the channel's thresholds start or meet it.

Everything here runs on the event loop thread (like `WebhookSender`); it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from extproc.config import AlertChannelConfig, AlertsConfig
from extproc.detect.findings import Finding, Severity
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.webhooks import WebhookSender

log = logging.getLogger("extproc.alerts")

QUEUE_SIZE = 256  # per channel: alerts are rare after filtering; a backlog means it is down
WORKERS = 2  # per channel: one slow delivery does not hold up the next alert
MAX_COOLDOWN_KEYS = 10_000  # per channel; budget/anomaly keys include the tenant id

# PagerDuty Events API v2 knows four severities; ours has five.
PAGERDUTY_SEVERITY = {
    Severity.CRITICAL: "critical",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "info",
    Severity.INFO: "info",
}
_PD_SUMMARY_MAX = 1024  # Events API v2 limit
_PD_DEDUP_MAX = 255  # Events API v2 limit


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One thing worth telling a human about; channels filter and format it.

    `score` is 0-100: a finding's confidence x 100; for an anomaly its confidence x 100
    (see `Anomaly.to_finding`); for a budget crossing 100, because a crossed limit is a
    fact, not a guess (channels then filter budget events by severity only).
    `summary` and `details` never carry prompt text or secrets.
    """

    kind: str  # "finding" | "budget" | "anomaly"
    type: str  # e.g. "prompt_injection", "budget_soft_limit", "cost_spike"
    severity: Severity
    score: int
    tenant_id: str | None
    trace_id: str | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0

    @property
    def dedup_key(self) -> str:
        """The cooldown key: the type for findings, type and tenant for the rest."""
        if self.kind == "finding":
            return self.type
        return f"{self.type}:{self.tenant_id or '-'}"


class BudgetCrossing(Protocol):
    """What `budget_alert` reads (extproc.policy.limits.BudgetEvent has these fields)."""

    @property
    def scope(self) -> str: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def agent_id(self) -> str | None: ...
    @property
    def window(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def spent_usd(self) -> float: ...
    @property
    def limit_usd(self) -> float: ...


def budget_alert(crossing: BudgetCrossing, *, trace_id: str | None, timestamp: float) -> AlertEvent:
    """An alert for a crossed budget cap: soft is HIGH (it exists to alert), hard CRITICAL."""
    severity = Severity.CRITICAL if crossing.kind == "hard" else Severity.HIGH
    who = crossing.tenant_id or "-"
    if crossing.scope == "agent" and crossing.agent_id:
        who = f"{who} (agent {crossing.agent_id})"
    consequence = "; requests are refused" if crossing.kind == "hard" else ""
    return AlertEvent(
        kind="budget",
        type=f"budget_{crossing.kind}_limit",
        severity=severity,
        score=100,
        tenant_id=crossing.tenant_id,
        trace_id=trace_id,
        summary=(
            f"{crossing.kind} {crossing.window} budget of ${crossing.limit_usd:.2f} reached "
            f"for {who}: ${crossing.spent_usd:.2f} spent{consequence}"
        ),
        details={
            "scope": crossing.scope,
            "agent_id": crossing.agent_id,
            "window": crossing.window,
            "limit_kind": crossing.kind,
            "spent_usd": round(crossing.spent_usd, 6),
            "limit_usd": crossing.limit_usd,
        },
        timestamp=timestamp,
    )


def iso_time(timestamp: float) -> str:
    """UTC ISO 8601 with milliseconds, as the other webhook payloads write times."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    # A caller's odd value (a set, an enum) must not fail the delivery later in a worker.
    result: dict[str, Any] = json.loads(json.dumps(details, default=str))
    return result


def webhook_payload(event: AlertEvent) -> dict[str, Any]:
    """The generic webhook body: every field of the event."""
    return {
        "kind": event.kind,
        "type": event.type,
        "severity": str(event.severity),
        "score": event.score,
        "tenant_id": event.tenant_id,
        "trace_id": event.trace_id,
        "summary": event.summary,
        "details": _jsonable(event.details),
        "timestamp": iso_time(event.timestamp),
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn control characters; a tenant id like "<!channel>" must not ping anyone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: AlertEvent) -> dict[str, Any]:
    """A Slack Incoming Webhook message: `text` for notifications, `blocks` for the channel."""
    severity = event.severity.name
    summary = _slack_escape(event.summary)
    fields = [
        ("Type", event.type),
        ("Severity", severity),
        ("Score", str(event.score)),
        ("Tenant", event.tenant_id or "-"),
        ("Trace", event.trace_id or "-"),
        ("Kind", event.kind),
    ]
    return {
        "text": f"[{severity}] {summary}",
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*{severity} {event.kind} alert: {_slack_escape(event.type)}*\n"
                    f"{summary}",
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"}
                    for name, value in fields
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"extproc | {iso_time(event.timestamp)}"}],
            },
        ],
    }


def pagerduty_payload(event: AlertEvent, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 trigger; one incident per type and tenant (dedup_key)."""
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": f"{event.type}:{event.tenant_id or '-'}"[:_PD_DEDUP_MAX],
        "payload": {
            "summary": event.summary[:_PD_SUMMARY_MAX],
            "source": "extproc",
            "severity": PAGERDUTY_SEVERITY[event.severity],
            "timestamp": iso_time(event.timestamp),
            "class": event.type,
            "custom_details": {
                "kind": event.kind,
                "type": event.type,
                "score": event.score,
                "tenant_id": event.tenant_id,
                "trace_id": event.trace_id,
                **_jsonable(event.details),
            },
        },
    }


class _Channel:
    """One configured destination: thresholds, cooldown state, sender and counters."""

    def __init__(
        self,
        name: str,
        config: AlertChannelConfig,
        alerts: AlertsConfig,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.config = config
        self.type = config.type
        self.metrics = metrics
        self.cooldowns: dict[str, float] = {}  # dedup key -> when last queued, oldest first
        self.counts = {"sent": 0, "failed": 0, "suppressed": 0, "skipped": 0, "dropped": 0}
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.clock = clock
        self.sender: WebhookSender | None = None
        if self.type != "email":
            self.sender = WebhookSender(
                _url(config, alerts),
                timeout_s=alerts.timeout_ms / 1000,
                max_retries=alerts.max_retries,
                queue_size=QUEUE_SIZE,
                metrics=metrics,
                workers=WORKERS,
                on_outcome=self._outcome,
                name=f"alert {name} ({self.type})",  # URLs carry secrets: never logged
            )

    def update(self, name: str, config: AlertChannelConfig, alerts: AlertsConfig) -> None:
        """Take reloaded thresholds and delivery settings."""
        self.name = name
        self.config = config
        if self.sender is not None:
            self.sender.update(
                url=_url(config, alerts),
                timeout_s=alerts.timeout_ms / 1000,
                max_retries=alerts.max_retries,
            )

    def offer(self, event: AlertEvent, now: float, cooldown_s: float) -> None:
        """Queue the event when it passes thresholds and cooldown; count what happened."""
        if event.severity < self.config.min_severity:
            return
        if event.score < self.config.min_security_score:
            return
        if self.sender is None:  # email: accepted in config, not implemented
            self._count("skipped")
            return
        key = event.dedup_key
        last = self.cooldowns.get(key)
        if last is not None and now - last < cooldown_s:
            self._count("suppressed")
            return
        if self.sender.submit(self.format(event)):
            # Re-inserted so the dict stays ordered by time and pruning stops early.
            self.cooldowns.pop(key, None)
            self.cooldowns[key] = now
            self._prune(now, cooldown_s)

    def format(self, event: AlertEvent) -> dict[str, Any]:
        """This channel's request body for the event."""
        if self.type == "slack":
            return slack_payload(event)
        if self.type == "pagerduty":
            return pagerduty_payload(event, self.config.routing_key or "")
        return webhook_payload(event)

    def _prune(self, now: float, cooldown_s: float) -> None:
        # Expired keys can go; past the bound the oldest go early (they may alert again).
        while self.cooldowns:
            key, when = next(iter(self.cooldowns.items()))
            if now - when < cooldown_s and len(self.cooldowns) <= MAX_COOLDOWN_KEYS:
                break
            del self.cooldowns[key]

    def _outcome(self, event: str, detail: str) -> None:
        if event == "delivered":
            self._count("sent")
        elif event == "retry":
            self.retries += 1
        elif event in ("failed", "dropped"):
            self._count(event)
            self.last_error = detail or event
            self.last_error_at = self.clock()

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metrics.inc(self.metrics.alerts, self.type, outcome)

    def status(self) -> dict[str, Any]:
        """Counters and the last error; no URL or routing key (they are secrets)."""
        return {
            "name": self.name,
            "type": self.type,
            "min_severity": str(self.config.min_severity),
            "min_security_score": self.config.min_security_score,
            **self.counts,
            "retries": self.retries,
            "pending": self.sender.pending if self.sender is not None else 0,
            "implemented": self.sender is not None,
            "last_error": self.last_error,
            "last_error_at": iso_time(self.last_error_at) if self.last_error_at else None,
        }


def _url(channel: AlertChannelConfig, alerts: AlertsConfig) -> str:
    """Where a channel POSTs."""
    if channel.type == "pagerduty":
        return alerts.pagerduty_url
    return channel.url or ""


def _identity(channel: AlertChannelConfig, alerts: AlertsConfig) -> tuple[str, str, str]:
    """What makes a reloaded channel the same channel (it keeps counters and cooldowns)."""
    return (channel.type, _url(channel, alerts), channel.routing_key or "")


def _channel_configs(config: AlertsConfig) -> list[tuple[str, AlertChannelConfig]]:
    """(status name, settings) per channel, the legacy webhook_url first."""
    found: list[tuple[str, AlertChannelConfig]] = []
    if config.webhook_url:
        legacy = AlertChannelConfig(
            type="webhook",
            url=config.webhook_url,
            min_severity=config.min_severity,
            min_security_score=config.min_security_score,
        )
        found.append(("webhook_url", legacy))
    found.extend((f"channels[{i}]", channel) for i, channel in enumerate(config.channels))
    return found


class AlertManager:
    """Fans alert events out to the configured channels, filtered, deduplicated and queued."""

    def __init__(
        self,
        config: AlertsConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.config = config
        self._channels: list[_Channel] = []
        self._retiring: set[asyncio.Task[None]] = set()  # senders of channels a reload removed
        self._closed = False
        self._apply(config)

    def reconfigure(self, config: AlertsConfig) -> None:
        """Apply reloaded settings; unchanged channels keep their counters and cooldowns."""
        self._apply(config)

    def _apply(self, config: AlertsConfig) -> None:
        wanted = _channel_configs(config) if config.enabled else []
        old: dict[tuple[str, str, str], list[_Channel]] = {}
        for channel in self._channels:
            old.setdefault(_identity(channel.config, self.config), []).append(channel)
        channels: list[_Channel] = []
        for name, settings in wanted:
            reused = old.get(_identity(settings, config))
            if reused:
                channel = reused.pop(0)
                channel.update(name, settings, config)
            else:
                channel = _Channel(name, settings, config, self.metrics, self.clock)
                if channel.type == "email":
                    log.warning("alert %s: email alerts are not implemented; skipped", name)
            channels.append(channel)
        self.config = config
        self._channels = channels
        for leftovers in old.values():
            for channel in leftovers:
                self._retire(channel)

    def _retire(self, channel: _Channel) -> None:
        # A removed channel delivers what it has queued, in the background, then stops.
        if channel.sender is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # never ran on a loop, so it has no workers or client to stop
        task = loop.create_task(channel.sender.close(self.config.timeout_ms / 1000))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def submit(self, event: AlertEvent) -> None:
        """Queue the event on every channel it qualifies for; never waits, never raises."""
        if self._closed or not self._channels:
            return
        try:
            now = self.clock()
            cooldown = float(self.config.cooldown_seconds)
            for channel in self._channels:
                channel.offer(event, now, cooldown)
        except Exception:  # an alerting bug must not fail the request that triggered it
            log.exception("alert submission failed")

    def findings(
        self, findings: Sequence[Finding], *, tenant_id: str | None, trace_id: str | None
    ) -> None:
        """Submit one event per finding type: its most severe, then most confident, finding."""
        if self._closed or not self._channels or not findings:
            return
        try:
            best: dict[str, Finding] = {}
            counts: dict[str, int] = {}
            for finding in findings:
                counts[finding.type] = counts.get(finding.type, 0) + 1
                top = best.get(finding.type)
                if top is None or (finding.severity, finding.confidence) > (
                    top.severity,
                    top.confidence,
                ):
                    best[finding.type] = finding
            now = self.clock()
            events = [
                _finding_event(finding, counts[kind], tenant_id, trace_id, now)
                for kind, finding in best.items()
            ]
        except Exception:
            log.exception("alert submission failed")
            return
        for event in events:
            self.submit(event)

    async def start(self) -> None:
        """Start the channels' delivery workers on the running loop."""
        for channel in self._channels:
            if channel.sender is not None:
                await channel.sender.start()

    # The bound is the API (shutdown passes its remaining budget), hence a parameter.
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop accepting; deliver what is queued within `timeout`, drop the rest."""
        self._closed = True
        closing = [
            channel.sender.close(timeout)
            for channel in self._channels
            if channel.sender is not None
        ]
        await asyncio.gather(*closing, return_exceptions=True)
        if self._retiring:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._retiring, return_exceptions=True), timeout
                )

    def status(self) -> dict[str, Any]:
        """Per-channel counters for /health and the API."""
        return {
            "enabled": self.config.enabled and not self._closed,
            "cooldown_seconds": self.config.cooldown_seconds,
            "channels": [channel.status() for channel in self._channels],
        }


def _finding_event(
    finding: Finding, count: int, tenant_id: str | None, trace_id: str | None, now: float
) -> AlertEvent:
    """The alert for a request's findings of one type (the finding is its worst)."""
    times = f" ({count} in the request)" if count > 1 else ""
    return AlertEvent(
        kind="finding",
        type=finding.type,
        severity=finding.severity,
        score=max(0, min(100, round(finding.confidence * 100))),
        tenant_id=tenant_id,
        trace_id=trace_id,
        summary=f"{finding.severity} {finding.type} detected{times} "
        f"(confidence {finding.confidence:.2f}, tenant {tenant_id or '-'})",
        details={
            "category": str(finding.category),
            "rule_id": finding.rule_id,
            "detector": finding.detector,
            "confidence": round(finding.confidence, 4),
            "count": count,
        },
        timestamp=now,
    )
