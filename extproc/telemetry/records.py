"""What happened to one request, kept in memory until the storage layer persists it."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from extproc.storage.model import SpanRecord, StoredFinding, security_score


@dataclass(slots=True)
class RequestRecord:
    """Timing, usage and outcome of one LLM request (one future trace span)."""

    trace_id: str
    tenant_id: str | None
    agent_id: str | None
    started: float  # time.time() when the request headers arrived
    model: str | None = None
    operation_name: str = ""
    dialect: str = ""
    status_code: int | None = None
    decision: str = "allowed"
    finding_types: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str = "none"  # "usage" (from the provider), "estimate", or "partial" (mixed)
    ttft_ms: float | None = None  # first model text seen in a streamed response
    latency_ms: float | None = None  # request headers to the end of the response
    source_ip: str | None = None
    cost_usd: float | None = None  # from the price book, when the model's price is known
    findings: list[StoredFinding] = field(default_factory=list)
    prompt: str | None = None  # as `storage.capture_content` allows
    response: str | None = None

    def to_span(self) -> SpanRecord:
        """The record as stored (one span per trace)."""
        findings = tuple(self.findings)
        return SpanRecord(
            trace_id=self.trace_id,
            span_id=self.trace_id,
            tenant_id=self.tenant_id,
            agent_id=self.agent_id,
            created_at=self.started,
            operation_name=self.operation_name or "request",
            decision=self.decision,
            security_score=security_score(findings),
            model_name=self.model,
            dialect=self.dialect,
            prompt=self.prompt,
            response=self.response,
            status_code=self.status_code,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            usage_source=self.usage_source,
            ttft_ms=self.ttft_ms,
            latency_ms=self.latency_ms,
            source_ip=self.source_ip,
            estimated_cost_usd=self.cost_usd,
            findings=findings,
        )


class RecentRecords:
    """The last `capacity` finished records (a ring; the storage issue adds a durable writer)."""

    def __init__(self, capacity: int = 1000) -> None:
        self._items: deque[RequestRecord] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        """Keep a finished record (never blocks beyond a short lock)."""
        with self._lock:
            self._items.append(record)

    def snapshot(self) -> list[RequestRecord]:
        """The records kept, oldest first."""
        with self._lock:
            return list(self._items)
