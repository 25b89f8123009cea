"""Streamed (SSE) responses through a real Envoy: pass through, early stop, split matches."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.harness import EnvoyProcess, Stack, running_stack, wait_until
from tests.integration.sse_upstream import FixedSseUpstream

pytestmark = pytest.mark.integration

OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
CHAT = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 50,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def openai_chunk(text: str) -> bytes:
    data = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def anthropic_delta(text: str) -> bytes:
    data = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }
    return b"event: content_block_delta\ndata: " + json.dumps(data).encode() + b"\n\n"


@contextlib.contextmanager
def sse_stack(settings: dict[str, object]) -> Iterator[tuple[Stack, FixedSseUpstream]]:
    """A stack whose Envoy points at a fixed-chunk SSE upstream."""
    upstream = FixedSseUpstream()
    with running_stack(settings) as stack:
        stack.envoy.stop()
        stack.config = stack.config.model_copy(
            update={"envoy": stack.config.envoy.model_copy(update={"upstream_url": upstream.url})}
        )
        stack.envoy = EnvoyProcess(stack.config)
        yield stack, upstream
    upstream.stop()


@pytest.fixture(scope="module")
def sse() -> Iterator[tuple[Stack, FixedSseUpstream]]:
    with sse_stack({}) as pair:
        yield pair


def stream(stack: Stack, path: str, body: dict[str, object]) -> tuple[int, bytes]:
    with stack.client.stream("POST", path, json=body) as resp:
        return resp.status_code, b"".join(resp.iter_raw())


def test_clean_stream_passes_byte_identical(sse: tuple[Stack, FixedSseUpstream]) -> None:
    stack, upstream = sse
    chunks = [openai_chunk(f"word{i} ") for i in range(30)] + [b"data: [DONE]\n\n"]
    upstream.reset(chunks)
    status, raw = stream(stack, "/v1/chat/completions", CHAT)
    assert status == 200
    assert raw == b"".join(chunks)


def test_secret_in_chunk_7_stops_the_stream_cleanly(sse: tuple[Stack, FixedSseUpstream]) -> None:
    stack, upstream = sse
    chunks = [openai_chunk(f"word{i} ") for i in range(30)] + [b"data: [DONE]\n\n"]
    chunks[6] = openai_chunk(f"the key is {OPENAI_KEY} ")
    upstream.reset(chunks, delay=0.03)
    started = time.monotonic()
    status, raw = stream(stack, "/v1/chat/completions", CHAT)
    elapsed = time.monotonic() - started
    assert status == 200
    assert raw.startswith(b"".join(chunks[:6]))
    assert OPENAI_KEY.encode() not in raw
    assert b"word7" not in raw  # never a later chunk
    tail = raw[len(b"".join(chunks[:6])) :]
    events = [e for e in tail.split(b"\n\n") if e]
    warning = json.loads(events[0].removeprefix(b"data: "))
    assert warning["choices"][0]["finish_reason"] == "content_filter"
    assert "Response stopped by security policy" in warning["error"]["message"]
    assert events[-1] == b"data: [DONE]"
    assert elapsed < 30 * 0.03  # did not wait for the upstream to finish
    wait_until(upstream.finished.is_set, "the upstream to end")
    assert upstream.aborted.is_set() and upstream.sent < 30  # Envoy closed the upstream


def test_secret_split_across_chunks_is_caught(sse: tuple[Stack, FixedSseUpstream]) -> None:
    stack, upstream = sse
    half = 10  # neither part matches on its own
    chunks = [
        openai_chunk("here: "),
        openai_chunk(OPENAI_KEY[:half]),
        openai_chunk(OPENAI_KEY[half:]),
        openai_chunk(" done"),
        b"data: [DONE]\n\n",
    ]
    upstream.reset(chunks, delay=0.02)
    status, raw = stream(stack, "/v1/chat/completions", CHAT)
    assert status == 200
    assert b"sk-proj" not in raw  # the first fragment was held back, never sent
    assert raw.startswith(chunks[0])
    assert b"content_filter" in raw


def test_anthropic_stream_stops_with_error_event(sse: tuple[Stack, FixedSseUpstream]) -> None:
    stack, upstream = sse
    start = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":3,"output_tokens":0}}}\n\n'  # noqa: E501
    chunks = [
        start,
        anthropic_delta("Sure, "),
        anthropic_delta(f"use {OPENAI_KEY}"),
        anthropic_delta("more"),
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    upstream.reset(chunks, delay=0.02)
    status, raw = stream(stack, "/v1/messages", MESSAGES)
    assert status == 200
    assert raw.startswith(start + chunks[1])
    assert OPENAI_KEY.encode() not in raw
    assert b"event: error" in raw
    assert b"more" not in raw


def test_malformed_sse_passes_through_unchanged(sse: tuple[Stack, FixedSseUpstream]) -> None:
    stack, upstream = sse
    chunks = [b"data: {not json}\n\n", b"garbage without a blank line", b" ... the end"]
    upstream.reset(chunks)
    status, raw = stream(stack, "/v1/chat/completions", CHAT)
    assert status == 200
    assert raw == b"".join(chunks)
    assert 'extproc_unscanned_total{direction="response",reason="sse_unparsed"}' in stack.metrics()


def test_demo_stream_through_envoy_is_checked() -> None:
    with running_stack() as s:
        body = {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "echo: all fine here"}],
        }
        with (
            httpx.Client(base_url=s.url, timeout=10) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            text = b"".join(resp.iter_raw()).decode()
        assert "data: [DONE]" in text
        assert 'extproc_responses_total{decision="streamed",dialect="openai"} 1.0' in s.metrics()


def test_openai_sdk_sees_tokens_then_a_clean_error(sse: tuple[Stack, FixedSseUpstream]) -> None:
    import openai

    stack, upstream = sse
    chunks = [
        openai_chunk("Hello "),
        openai_chunk("there, "),
        openai_chunk(f"key {OPENAI_KEY}"),
        openai_chunk(" bye"),
        b"data: [DONE]\n\n",
    ]
    upstream.reset(chunks, delay=0.01)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="sk-test", max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="Response stopped by security policy"):
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello there, "


def test_split_email_and_key_are_redacted_in_the_stream() -> None:
    email, aws = "jane.doe@example.com", "AKIAIOSFODNN7EXAMPLE"
    chunks = [
        openai_chunk("Write to jane."),
        openai_chunk("doe@exam"),
        openai_chunk("ple.com and use AKIAIOSF"),
        openai_chunk("ODNN7EXAMPLE please"),
        openai_chunk(" — thanks"),
        b"data: [DONE]\n\n",
    ]
    with sse_stack({"pii.action": "alert_and_redact"}) as (stack, upstream):
        upstream.reset(chunks, delay=0.01)
        status, raw = stream(stack, "/v1/chat/completions", CHAT)
        assert status == 200
        assert email.encode() not in raw and b"jane" not in raw
        assert aws.encode() not in raw and b"AKIA" not in raw
        text = "".join(
            json.loads(event.removeprefix(b"data: "))["choices"][0]["delta"].get("content", "")
            for event in raw.split(b"\n\n")
            if event.startswith(b"data: {")
        )
        assert text == "Write to [PII:EMAIL] and use [SECRET:AWS_ACCESS_KEY] please — thanks"
        assert raw.endswith(b"data: [DONE]\n\n")
        assert 'extproc_stream_redacted_events_total{dialect="openai"}' in stack.metrics()


def test_responses_stream_stops_with_error_events(sse: tuple[Stack, FixedSseUpstream]) -> None:
    stack, upstream = sse

    def delta(text: str) -> bytes:
        data = {
            "type": "response.output_text.delta",
            "item_id": "m1",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        }
        return b"event: response.output_text.delta\ndata: " + json.dumps(data).encode() + b"\n\n"

    chunks = [delta("Here: "), delta(OPENAI_KEY), delta(" more")]
    upstream.reset(chunks, delay=0.01)
    status, raw = stream(stack, "/v1/responses", {"model": "gpt-4o", "stream": True, "input": "x"})
    assert status == 200
    assert raw.startswith(chunks[0])
    assert OPENAI_KEY.encode() not in raw and b"more" not in raw
    assert b"event: error" in raw and b"response.failed" in raw
