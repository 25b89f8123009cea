"""What the demo upstream says, and the pieces every endpoint's payload is built from."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

ECHO_PREFIX = "echo:"
CHUNK_CHARS = 4


@dataclass(frozen=True, slots=True)
class Turn:
    """One request as the payload builders need it: model, reply text and token counts."""

    model: str
    text: str
    input_tokens: int
    stream: bool = False
    include_usage: bool = False  # OpenAI `stream_options.include_usage`
    instructions: str | None = None  # Responses API, echoed back as the real API does

    @property
    def output_tokens(self) -> int:
        """Rough completion token count."""
        return estimate_tokens(self.text)


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer: a JSON body, or a stream of ready-made SSE frames."""

    status: int = 200
    body: Any = None
    events: Iterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def reply_text(model: str, last_user_text: str | None) -> str:
    """The canned reply, or exactly the text after `echo:` so tests can script the output."""
    if last_user_text is not None and last_user_text.startswith(ECHO_PREFIX):
        return last_user_text[len(ECHO_PREFIX) :].strip()
    return f"Hello! This is {model} on the extproc demo upstream, replying with canned text."


def estimate_tokens(text: str) -> int:
    """About four characters per token, as a rough usage figure."""
    return (len(text) + 3) // 4


def pieces(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """The text cut into stream deltas of `size` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def new_id(prefix: str) -> str:
    """A provider-looking random id, e.g. `chatcmpl-3f9a...`."""
    return prefix + secrets.token_hex(12)


def now() -> int:
    """Unix time in seconds, as `created` fields carry it."""
    return int(time.time())


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event frame with a JSON `data` line (and an `event` line if named)."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
