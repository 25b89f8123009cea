"""The official SDKs read our warning events as the error they are (skipped without the SDKs)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from extproc.dialects.stream import decoder_for_path

MESSAGE = "Response stopped by policy: secret detected"


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


# What the upstream had sent before we stopped the stream, per path.
PREFIXES: dict[str, bytes] = {
    "/v1/chat/completions": sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
        }
    ),
    "/v1/completions": sse(
        {
            "id": "c",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [{"text": "Hi", "index": 0, "finish_reason": None}],
        }
    ),
    "/v1/responses": sse(
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {"id": "r", "object": "response", "status": "in_progress", "output": []},
        },
        "response.created",
    ),
    "/v1/messages": sse(
        {
            "type": "message_start",
            "message": {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        },
        "message_start",
    ),
}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        path = self.path.split("?", 1)[0]
        decoder = decoder_for_path(path)
        assert decoder is not None
        body = PREFIXES[path] + decoder.warning_events(MESSAGE, "output_blocked")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_chat_raises_api_error(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError, match="secret detected"):
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert texts == ["Hi"]


def test_openai_completions_raises_api_error(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    stream = client.completions.create(model="m", prompt="hi", stream=True)
    with pytest.raises(openai.APIError, match="secret detected"):
        for _ in stream:
            pass


def test_openai_responses_yields_error_and_failed(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    events = list(client.responses.create(model="m", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "error", "response.failed"]
    assert events[1].message == MESSAGE and events[1].code == "output_blocked"
    assert events[2].response.status == "failed"
    assert events[2].response.error.message == MESSAGE


def test_anthropic_raises(base_url: str) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=base_url, api_key="x", max_retries=0)
    stream = client.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(anthropic.APIError, match="secret detected"):
        for _ in stream:
            pass
