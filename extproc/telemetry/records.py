"""What happened to one request, kept in memory until the storage layer persists it."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


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
