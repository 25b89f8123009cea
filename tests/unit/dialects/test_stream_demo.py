"""Real streams from the demo upstream, fed in small random chunks to parser and decoder."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from extproc.demo.upstream import DemoUpstream, start_demo_upstream
from extproc.dialects.sse import SseParser
from extproc.dialects.stream import CONTENT, Usage, decoder_for_path

ECHO = 'Hello, wörld — this is an exact 🙂 reply with\nnewlines and "quotes".'


@pytest.fixture(scope="module")
def upstream() -> Iterator[DemoUpstream]:
    with start_demo_upstream() as server:
        yield server


def fetch(upstream: DemoUpstream, path: str, body: dict[str, Any]) -> bytes:
    with (
        httpx.Client(base_url=upstream.url, timeout=5) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return b"".join(response.iter_raw())


@dataclass
class Seen:
    text: str = ""
    done: bool = False
    usages: list[Usage] = field(default_factory=list)
    unparsed: int = 0
    after_done: int = 0
    raw: bytes = b""


def replay(path: str, body: bytes, seed: int) -> Seen:
    decoder = decoder_for_path(path)
    assert decoder is not None
    rng = random.Random(seed)
    parser = SseParser()
    seen = Seen()
    pos = 0
    while pos < len(body):
        step = rng.randint(1, 40)
        for event in parser.feed(body[pos : pos + step]):
            delta = decoder.decode(event)
            seen.raw += event.raw
            if seen.done:
                seen.after_done += 1
            if delta.kind == CONTENT:
                seen.text += delta.text
            if delta.usage is not None:
                seen.usages.append(delta.usage)
            seen.unparsed += not delta.parsed
            seen.done = seen.done or delta.done
        pos += step
    seen.raw += parser.flush()
    return seen


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"echo: {text}"}]


CASES: list[tuple[str, dict[str, Any], Usage | None]] = [
    ("/v1/chat/completions", {"messages": user(ECHO), "stream": True}, None),
    (
        "/v1/chat/completions",
        {"messages": user(ECHO), "stream": True, "stream_options": {"include_usage": True}},
        Usage(None, (len(ECHO) + 3) // 4),
    ),
    (
        "/v1/completions",
        {"prompt": f"echo: {ECHO}", "stream": True, "stream_options": {"include_usage": True}},
        Usage(None, (len(ECHO) + 3) // 4),
    ),
    (
        "/v1/responses",
        {"input": f"echo: {ECHO}", "stream": True},
        Usage(None, (len(ECHO) + 3) // 4),
    ),
    (
        "/v1/messages",
        {"max_tokens": 64, "messages": user(ECHO), "stream": True},
        Usage(None, (len(ECHO) + 3) // 4),
    ),
]


@pytest.mark.parametrize(("path", "request_body", "usage"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_stream_decodes_exactly(
    upstream: DemoUpstream,
    path: str,
    request_body: dict[str, Any],
    usage: Usage | None,
    seed: int,
) -> None:
    body = fetch(upstream, path, {"model": "demo", **request_body})
    seen = replay(path, body, seed)
    assert seen.raw == body
    assert seen.text == ECHO.strip()
    assert seen.done and seen.after_done == 0
    assert seen.unparsed == 0
    if usage is None:
        assert seen.usages == []
    else:
        # The prompt count is the demo's estimate; the completion count must match exactly.
        assert seen.usages, "usage expected"
        assert seen.usages[-1].completion_tokens == usage.completion_tokens
        assert any(u.prompt_tokens for u in seen.usages)
