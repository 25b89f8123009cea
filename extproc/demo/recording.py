"""A bounded, thread-safe log of the requests the demo upstream received."""

from __future__ import annotations

import base64
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

MAX_RECORDED = 1000


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it reached the upstream (after Envoy and extproc)."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view with the body base64-encoded."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body_base64": base64.b64encode(self.body).decode("ascii"),
        }


class Recorder:
    """Keeps the last MAX_RECORDED requests; safe to use from handler threads and tests."""

    def __init__(self, limit: int = MAX_RECORDED) -> None:
        self._lock = threading.Lock()
        self._items: deque[RecordedRequest] = deque(maxlen=limit)

    def add(self, request: RecordedRequest) -> None:
        """Record a request, dropping the oldest beyond the limit."""
        with self._lock:
            self._items.append(request)

    def snapshot(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget every recorded request."""
        with self._lock:
            self._items.clear()
