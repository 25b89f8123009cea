"""The ext_proc state machine without Envoy: phase messages in, answers out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.config import Config, load_config
from extproc.detect.findings import Finding, Role
from extproc.policy.inspect import Inspector
from extproc.server.processor import Engine, ExternalProcessor
from extproc.telemetry.metrics import Metrics

CHAT = "/v1/chat/completions"


class BrokenScanner:
    """Stands in for a detector that fails on one request."""

    rule_count = 1

    def scan(self, text: str, role: Role) -> list[Finding]:
        raise RuntimeError("hyperscan scratch corrupted")


def headers(path: str, **extra: str) -> pb.ProcessingRequest:
    values = {":path": path, ":method": "POST", "content-type": "application/json", **extra}
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()
                ]
            )
        )
    )


def body(data: Any) -> pb.ProcessingRequest:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True))


async def run(engine: Engine, *messages: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    async def stream() -> AsyncIterator[pb.ProcessingRequest]:
        for m in messages:
            yield m

    return [r async for r in ExternalProcessor(engine).Process(stream(), None)]


def engine_with(scanner: Any, config: Config) -> Engine:
    return Engine(config, Inspector(config, scanner), Metrics())


def chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_detector_error_fails_only_that_request(mode: str) -> None:
    config = load_config(environ={}, overrides=[("server.failure_mode", mode)])
    engine = engine_with(BrokenScanner(), config)
    answers = await run(engine, headers(CHAT), body(chat("hello")))
    last = answers[-1]
    if mode == "closed":
        assert last.immediate_response.status.code == 500
        error = orjson.loads(last.immediate_response.body)["error"]
        assert "fail-closed" in error["message"]
    else:
        assert last.HasField("request_body")
        assert not last.request_body.response.HasField("body_mutation")
    text = engine.metrics.render().decode()
    assert f'extproc_errors_total{{failure_mode="{mode}",phase="request_body"}} 1.0' in text
    # the next request on the same engine is processed normally
    assert len(await run(engine, headers("/v1/models"))) == 1


async def test_oversize_content_length_rejected_on_headers() -> None:
    config = load_config(environ={}, overrides=[("server.max_request_size_bytes", 2048)])
    engine = engine_with(BrokenScanner(), config)
    (answer,) = await run(engine, headers("/v1/messages", **{"content-length": "5000"}))
    assert answer.immediate_response.status.code == 413
    error = orjson.loads(answer.immediate_response.body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "request_too_large"


async def test_unknown_path_switches_bodies_off() -> None:
    engine = engine_with(BrokenScanner(), Config())
    (answer,) = await run(engine, headers("/v1/embeddings"))
    mode = answer.mode_override
    assert mode.request_body_mode == mode.NONE
    assert mode.response_body_mode == mode.NONE
    trace = {
        h.header.key: h.header.raw_value
        for h in answer.request_headers.response.header_mutation.set_headers
    }
    assert len(trace["x-llmtrace-trace-id"]) == 32


_REAL_ENGINE: list[Engine] = []


def real_engine() -> Engine:
    if not _REAL_ENGINE:
        from extproc.server.app import build_engine

        _REAL_ENGINE.append(build_engine(Config()))
    return _REAL_ENGINE[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "model",
                    "messages",
                    "role",
                    "content",
                    "type",
                    "text",
                    "input",
                    "system",
                    "tool_calls",
                    "function",
                    "arguments",
                    "prompt",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from([CHAT, "/v1/messages", "/v1/responses", "/v1/completions"]),
    payload=st.one_of(json_values.map(orjson.dumps), st.binary(max_size=200)),
)
async def test_any_body_gets_a_well_formed_answer(path: str, payload: bytes) -> None:
    engine = real_engine()
    answers = await run(engine, headers(path), body(payload))
    assert len(answers) == 2
    last = answers[-1]
    if last.HasField("immediate_response"):
        assert last.immediate_response.status.code in (400, 403)
        assert orjson.loads(last.immediate_response.body)
    else:
        assert last.HasField("request_body")
    assert "extproc_errors_total{" not in engine.metrics.render().decode()


async def test_compressed_request_body_is_refused_not_bypassed() -> None:
    engine = engine_with(BrokenScanner(), Config())
    (answer,) = await run(engine, headers(CHAT, **{"content-encoding": "gzip"}))
    assert answer.immediate_response.status.code == 415
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert "Content-Encoding 'gzip'" in error["message"]


def response_headers(content_type: str) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                    base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode()),
                ]
            )
        )
    )


def response_chunk(data: bytes, end: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=end))


SSE_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hello"}}]}\n\n'


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_detector_error_mid_stream_never_resets_it(mode: str) -> None:
    config = load_config(environ={}, overrides=[("server.failure_mode", mode)])
    engine = engine_with(BrokenScanner(), config)
    request = {"model": "gpt-4o", "stream": True, "messages": []}
    answers = await run(
        engine,
        headers(CHAT),
        body(request),  # an empty conversation: nothing for the broken scanner to see
        response_headers("text/event-stream"),
        response_chunk(SSE_CHUNK),
        response_chunk(b"data: [DONE]\n\n", end=True),
    )
    switch = answers[2]
    assert switch.mode_override.response_body_mode == switch.mode_override.FULL_DUPLEX_STREAMED
    streamed = answers[3].response_body.response.body_mutation.streamed_response
    if mode == "closed":
        assert len(answers) == 4  # the stream ended with the warning
        assert streamed.end_of_stream
        assert b"fail-closed" in streamed.body
    else:
        assert streamed.body == SSE_CHUNK and not streamed.end_of_stream
        last = answers[4].response_body.response.body_mutation.streamed_response
        assert last.body == b"data: [DONE]\n\n" and last.end_of_stream


async def test_streaming_off_leaves_sse_alone() -> None:
    config = load_config(environ={}, overrides=[("streaming_analysis.enabled", False)])
    engine = engine_with(BrokenScanner(), config)
    answers = await run(
        engine, headers(CHAT), body(chat("hi")), response_headers("text/event-stream")
    )
    mode = answers[-1].mode_override
    assert mode.response_body_mode == mode.NONE


@pytest.mark.parametrize(
    ("address", "ip"),
    [("127.0.0.1:5123", "127.0.0.1"), ("[::1]:443", "::1"), ("10.1.2.3", "10.1.2.3"), ("", None)],
)
def test_source_ip_from_envoy_attributes(address: str, ip: str | None) -> None:
    from google.protobuf import struct_pb2

    from extproc.server.processor import source_ip

    request = pb.ProcessingRequest()
    attrs = struct_pb2.Struct()
    attrs.update({"source.address": address})
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    assert source_ip(request) == ip
    assert source_ip(pb.ProcessingRequest()) is None
