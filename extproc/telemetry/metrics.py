"""Prometheus metrics: one registry per server so tests and workers stay independent."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Phase work is tens of microseconds for regex and up to seconds for ML/large bodies.
_PHASE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Metrics:
    """Every metric the ext_proc server exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            # Several worker processes (`server.workers`): each writes its values to files
            # in that folder and the exposition merges them, so the metrics register on a
            # private registry that is never exposed directly.
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            r = CollectorRegistry()
        self.requests = Counter(
            "extproc_requests",
            "Requests processed, by final decision and dialect.",
            ["decision", "dialect"],
            registry=r,
        )
        self.responses = Counter(
            "extproc_responses",
            "Buffered responses processed, by decision and dialect.",
            ["decision", "dialect"],
            registry=r,
        )
        self.findings = Counter(
            "extproc_findings",
            "Findings, by type, severity and direction (request or response).",
            ["type", "severity", "direction"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "extproc_phase_duration_seconds",
            "Time spent in each ext_proc phase inside extproc.",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "extproc_errors",
            "Requests whose processing failed, by phase; handled per failure_mode.",
            ["phase", "failure_mode"],
            registry=r,
        )
        self.bad_requests = Counter(
            "extproc_rejected_requests",
            "Requests rejected before analysis (malformed body, too large), by reason.",
            ["reason"],
            registry=r,
        )
        self.unscanned = Counter(
            "extproc_unscanned",
            "Bodies passed through without analysis, by reason (circuit_open: the analysis "
            "circuit breaker is open and server.failure_mode is open).",
            ["direction", "reason"],
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "extproc_time_to_first_token_seconds",
            "From request headers to the first model text of a streamed response.",
            ["dialect"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.tokens = Counter(
            "extproc_tokens",
            "Tokens of finished requests, by kind and whether the provider reported them.",
            ["kind", "source"],
            registry=r,
        )
        self.stream_redactions = Counter(
            "extproc_stream_redacted_events",
            "SSE events rewritten because a redaction touched their text.",
            ["dialect"],
            registry=r,
        )
        self.storage_queue_depth = Gauge(
            "extproc_storage_queue_depth",
            "Trace records waiting for the writer.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.storage_batches = Counter(
            "extproc_storage_batches", "Batches written to the trace store.", registry=r
        )
        self.storage_records = Counter(
            "extproc_storage_records",
            "Trace records by outcome: written, spilled (to the journal), replayed (from it), "
            "skipped (unreadable journal records), dropped (lost; should stay 0).",
            ["outcome"],
            registry=r,
        )
        self.cache_fallbacks = Counter(
            "extproc_cache_fallbacks",
            "Times Redis failed and counters fell back to this process (degraded).",
            registry=r,
        )
        self.breaker_state = Gauge(
            "extproc_circuit_breaker_state",
            "Circuit breaker state per breaker (analysis, storage): 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
            multiprocess_mode="max",
        )
        self.breaker_transitions = Counter(
            "extproc_circuit_breaker_transitions",
            "Circuit breaker state changes, by breaker and the state entered.",
            ["breaker", "state"],
            registry=r,
        )
        self.active_streams = Gauge(
            "extproc_active_streams",
            "ext_proc streams currently open.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rules_loaded = Gauge(
            "extproc_rules_loaded",
            "Regex rules compiled into the detection database.",
            registry=r,
            multiprocess_mode="max",
        )

        self.ml_models_loaded = Gauge(
            "extproc_ml_model_loaded",
            "1 when the model is loaded and used, 0 when it failed to load (regex-only).",
            ["model", "role"],
            registry=r,
            multiprocess_mode="min",
        )
        self.ml_load_failures = Counter(
            "extproc_ml_load_failures",
            "Models that failed to load at startup; analysis degraded to regex for them.",
            ["model", "role"],
            registry=r,
        )
        self.ml_batch_seconds = Histogram(
            "extproc_ml_batch_seconds",
            "Time of one model call (one micro-batch).",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.ml_batch_size = Histogram(
            "extproc_ml_batch_size",
            "Texts per model call: above 1 means concurrent requests shared a call.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.ml_wait_seconds = Histogram(
            "extproc_ml_wait_seconds",
            "How long a request waited for its model results (inline timing).",
            ["direction"],
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.ml_skipped = Counter(
            "extproc_ml_skipped",
            "Model runs not used for the verdict: shed (queue longer than the budget), late "
            "(budget passed; recorded later), failed, or regex_decided (regex already blocked).",
            ["model", "reason"],
            registry=r,
        )
        self.ml_queue_depth = Gauge(
            "extproc_ml_queue_depth",
            "Texts queued or running per model.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )

        self.admission_denials = Counter(
            "extproc_admission_denials",
            "Requests refused before the upstream: ip_blocked, rate_limited, budget_exceeded, "
            "token_cap.",
            ["reason"],
            registry=r,
        )
        self.completion_clamps = Counter(
            "extproc_completion_clamps",
            "Requests whose max_tokens was lowered to the completion token cap.",
            registry=r,
        )
        self.spend_usd = Counter(
            "extproc_spend_usd",
            "Estimated spend of forwarded requests, from response usage and the price book.",
            registry=r,
        )
        self.budget_events = Counter(
            "extproc_budget_events",
            "Budget limits crossed (soft: alert; hard: later requests refused), by window.",
            ["window", "kind"],
            registry=r,
        )
        self.authz_checks = Counter(
            "extproc_authz_checks",
            "ext_authz Check calls, by result (allowed, denied, error).",
            ["result"],
            registry=r,
        )
        self.reloads = Counter(
            "extproc_config_reloads",
            "Policy reloads (SIGHUP or file change): applied, or rejected (old policy kept).",
            ["result"],
            registry=r,
        )
        self.action_events = Counter(
            "extproc_action_router_events",
            "Action-router outcomes: offense (a request counted against its IP), ip_blocked "
            "(an IP reached max_offenses), webhook_queued.",
            ["event"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "extproc_webhook_deliveries",
            "Webhook payloads by outcome: delivered, failed (after retries), dropped "
            "(queue full or given up at shutdown).",
            ["outcome"],
            registry=r,
        )
        self.webhook_retries = Counter(
            "extproc_webhook_retries",
            "Webhook attempts after the first (errors, 5xx, 429).",
            registry=r,
        )
        self.webhook_queue_depth = Gauge(
            "extproc_webhook_queue_depth",
            "Webhook payloads waiting for a worker.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.alerts = Counter(
            "extproc_alerts",
            "Alert events per channel type, by outcome: sent, failed (after retries), "
            "suppressed (cooldown), skipped (channel not implemented), dropped (queue full or "
            "given up at shutdown).",
            ["channel", "outcome"],
            registry=r,
        )
        self.anomalies = Counter(
            "extproc_anomalies",
            "Per-tenant anomalies detected, by type (cost_spike, token_spike, velocity_spike, "
            "latency_spike).",
            ["type"],
            registry=r,
        )
        self.anomaly_tenants = Gauge(
            "extproc_anomaly_tenants",
            "Tenants whose baselines the anomaly detector holds (bounded; least recent evicted).",
            registry=r,
            multiprocess_mode="livesum",
        )

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached: label lookups were a tenth of the per-request cost."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def inc(self, counter: Counter, *values: str) -> None:
        """Add one to the counter child with these label values."""
        self.child(counter, *values).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
