"""The demo upstream over real HTTP: every endpoint, streaming, echo mode, recording, errors."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.demo.upstream import DemoUpstream, start_demo_upstream

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def upstream() -> Iterator[DemoUpstream]:
    with start_demo_upstream() as server:
        yield server


@pytest.fixture
def client(upstream: DemoUpstream) -> Iterator[httpx.Client]:
    upstream.clear()
    with httpx.Client(base_url=upstream.url, timeout=5) as http:
        yield http


def sse_events(raw: str) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) per frame; `[DONE]` stays a string."""
    events: list[tuple[str | None, Any]] = []
    for frame in raw.split("\n\n"):
        if not frame.strip():
            continue
        name = None
        data = ""
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def test_health_is_not_recorded(client: httpx.Client, upstream: DemoUpstream) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert upstream.requests == []


def test_models(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert all(m["object"] == "model" for m in body["data"])


def test_chat_default_reply_mentions_model(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat("Hi there"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "gpt-4o-mini" in choice["message"]["content"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == 2  # "Hi there" is 8 characters
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_echo_uses_last_user_text(client: httpx.Client) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "echo: not me"},
            {"role": "user", "content": "echo: nor me"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "echo:  my key is AKIAIOSFODNN7EXAMPLE "}],
            },
        ],
    }
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["content"] == "my key is AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream(client: httpx.Client, include_usage: bool) -> None:
    request = chat("echo: The quick brown fox jumps.", stream=True)
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    response = client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = [data for _, data in sse_events(response.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    if include_usage:
        usage_chunk = chunks.pop()
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 7  # 26 characters
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    final = chunks.pop()
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(deltas) == "The quick brown fox jumps."
    assert max(len(d) for d in deltas) == 4


def test_completions(client: httpx.Client) -> None:
    body = client.post("/v1/completions", json={"model": "inst", "prompt": "echo: done"}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "done"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_completions_stream(client: httpx.Client) -> None:
    request = {"prompt": ["a", "echo: streamed text"], "stream": True}
    events = [data for _, data in sse_events(client.post("/v1/completions", json=request).text)]
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == "streamed text"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[0]["model"] == "demo-model"


def test_responses(client: httpx.Client) -> None:
    request = {"model": "gpt-4.1", "instructions": "Be brief.", "input": "echo: hello"}
    body = client.post("/v1/responses", json=request).json()
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["instructions"] == "Be brief."
    (item,) = body["output"]
    assert item["type"] == "message"
    assert item["content"] == [{"type": "output_text", "text": "hello", "annotations": []}]
    assert body["usage"]["output_tokens"] == 2


def test_responses_stream(client: httpx.Client) -> None:
    request = {
        "model": "gpt-4.1",
        "stream": True,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "echo: hi friend"}]}],
    }
    events = sse_events(client.post("/v1/responses", json=request).text)
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-1] == "response.completed"
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    assert "".join(deltas) == "hi friend"
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == "hi friend"


def test_anthropic_messages(client: httpx.Client) -> None:
    request = {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 100,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "echo: 555-0100"}]}],
    }
    body = client.post("/v1/messages", json=request).json()
    assert body["type"] == "message"
    assert body["content"] == [{"type": "text", "text": "555-0100"}]
    assert body["stop_reason"] == "end_turn"
    assert set(body["usage"]) == {"input_tokens", "output_tokens"}


def test_anthropic_messages_stream(client: httpx.Client) -> None:
    request = {
        "model": "claude",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    response = client.post("/v1/messages", json=request)
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    text = "".join(d["text"] for d in deltas)
    assert "claude" in text
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"]["output_tokens"] == (len(text) + 3) // 4


def test_recording(client: httpx.Client, upstream: DemoUpstream) -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"x"}]}'
    client.post(
        "/v1/chat/completions?trace=1",
        content=raw,
        headers={"Content-Type": "application/json", "X-Tenant": "acme"},
    )
    (recorded,) = upstream.requests
    assert (recorded.method, recorded.path, recorded.body) == (
        "POST",
        "/v1/chat/completions?trace=1",
        raw,
    )
    assert recorded.headers["x-tenant"] == "acme"
    assert recorded.headers["content-length"] == str(len(raw))
    listing = client.get("/__demo/requests").json()["requests"]
    assert base64.b64decode(listing[0]["body_base64"]) == raw
    assert client.delete("/__demo/requests").json() == {"cleared": 1}
    assert upstream.requests == []
    client.get("/v1/models")
    upstream.clear()
    assert upstream.requests == []


def test_recording_keeps_the_last_thousand() -> None:
    from extproc.demo.recording import MAX_RECORDED, RecordedRequest, Recorder

    recorder = Recorder()
    for i in range(MAX_RECORDED + 5):
        recorder.add(RecordedRequest("GET", f"/{i}", {}, b""))
    kept = recorder.snapshot()
    assert len(kept) == MAX_RECORDED
    assert kept[0].path == "/5"


def test_unknown_path_is_404_in_dialect_shape(client: httpx.Client) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    anthropic = client.post("/v1/messages/batches", json={})
    assert anthropic.status_code == 404
    assert anthropic.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "Unknown request URL: POST /v1/messages/batches",
        },
    }


def test_wrong_method_is_405(client: httpx.Client) -> None:
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", b"{not json", "request body is not valid JSON"),
        ("/v1/chat/completions", b'{"messages": 3}', "messages: expected array, got number"),
        ("/v1/responses", b"\xff", "request body is not valid JSON"),
    ],
)
def test_bad_openai_body_is_400(client: httpx.Client, path: str, body: bytes, message: str) -> None:
    response = client.post(path, content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


def test_bad_anthropic_body_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/messages", content=b"[1,")
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("request body is not valid JSON")


def test_chunked_request_body(client: httpx.Client, upstream: DemoUpstream) -> None:
    raw = json.dumps(chat("echo: chunked ok")).encode()

    def parts() -> Iterator[bytes]:
        yield raw[:10]
        yield raw[10:]

    response = client.post("/v1/chat/completions", content=parts())
    assert response.json()["choices"][0]["message"]["content"] == "chunked ok"
    assert upstream.requests[0].headers["transfer-encoding"] == "chunked"
    assert upstream.requests[0].body == raw


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(4096)
    return head + b"\r\n\r\n" + rest[:length]


def test_keep_alive_serves_several_requests_on_one_connection(upstream: DemoUpstream) -> None:
    with socket.create_connection((upstream.host, upstream.port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: demo\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200")


def test_chunk_delay() -> None:
    with start_demo_upstream(chunk_delay_ms=20) as slow:
        started = time.monotonic()
        response = httpx.post(
            f"{slow.url}/v1/chat/completions", json=chat("echo: 12345678", stream=True)
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed >= 0.06  # 5 frames after the first, 20 ms apart


def test_stop_closes_listener_and_connections() -> None:
    server = start_demo_upstream()
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200  # leaves a keep-alive connection open
        server.stop()
        with pytest.raises(httpx.TransportError):
            http.get("/healthz")


def test_cli_process_serves_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "extproc.demo.upstream", "--port", "0", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("demo upstream listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
