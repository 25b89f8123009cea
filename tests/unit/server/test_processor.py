"""The ext_proc state machine without Envoy: phase messages in, answers out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

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
