"""What is stored for one request: a span of a trace, with its findings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.detect.findings import Severity

# Severity weights for the 0-100 security score (a finding's weight times its confidence).
_SCORE = {
    Severity.INFO: 0,
    Severity.LOW: 25,
    Severity.MEDIUM: 50,
    Severity.HIGH: 75,
    Severity.CRITICAL: 100,
}


@dataclass(frozen=True, slots=True)
class StoredFinding:
    """A finding as stored: where it was (`request:messages[0].content:12-40`), and why."""

    type: str
    category: str
    severity: int
    confidence: float
    location: str
    rule_id: str
    detector: str


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One LLM request through Envoy; `trace_id` doubles as span id (one span per trace)."""

    trace_id: str
    span_id: str
    tenant_id: str | None
    agent_id: str | None
    created_at: float
    operation_name: str
    decision: str
    security_score: int
    model_name: str | None = None
    dialect: str | None = None
    prompt: str | None = None
    response: str | None = None
    status_code: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    estimated_cost_usd: float | None = None
    source_ip: str | None = None
    findings: tuple[StoredFinding, ...] = ()

    def to_json(self) -> bytes:
        """Compact JSON, as written to the spill journal."""
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> SpanRecord:
        """The inverse of `to_json`; raises ValueError on a record that does not fit."""
        raw: dict[str, Any] = orjson.loads(data)
        findings = tuple(StoredFinding(**f) for f in raw.pop("findings", ()))
        try:
            return cls(**raw, findings=findings)
        except TypeError as exc:
            raise ValueError(f"not a span record: {exc}") from None


def security_score(findings: tuple[StoredFinding, ...]) -> int:
    """0 (nothing found) to 100 (a certain critical finding)."""
    return max((round(_SCORE[Severity(f.severity)] * f.confidence) for f in findings), default=0)
