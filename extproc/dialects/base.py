"""What every dialect provides to the processor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from extproc.detect.findings import Role

JsonPath = tuple[str | int, ...]


class DialectError(ValueError):
    """The body is not what this endpoint accepts (bad JSON or wrong shape)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of text to scan, who wrote it, and where it sits in the JSON body."""

    role: Role
    text: str
    path: JsonPath  # keys/indexes from the body root to the string, for write-back on redaction


class Dialect(Protocol):
    """One provider wire format (OpenAI-compatible, Anthropic)."""

    name: str

    def extract_request(self, path: str, body: Any) -> list[Segment]:
        """Text segments of a parsed request body; raises DialectError on a wrong shape."""
        ...

    def extract_response(self, path: str, body: Any) -> list[Segment]:
        """Text segments of a parsed non-streaming response body."""
        ...

    def error_body(self, status: int, message: str, code: str | None = None) -> bytes:
        """A JSON error body the client's SDK understands."""
        ...
