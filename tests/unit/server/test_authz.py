"""The ext_authz servicer over a real gRPC channel: CheckRequest in, allow or deny out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import grpc
import orjson
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ctx
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2

from extproc.policy.gate import Admission, AuthzInput, Denial
from extproc.server.authz import Authorizer, Decide
from extproc.telemetry.metrics import Metrics

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


class Recorder:
    """A fake `decide`: remembers what it was asked and answers with a fixed Admission."""

    def __init__(self, admission: Admission | None = None) -> None:
        self.admission = admission or Admission(None)
        self.seen: list[AuthzInput] = []

    async def __call__(self, request: AuthzInput) -> Admission:
        self.seen.append(request)
        return self.admission


async def broken(request: AuthzInput) -> Admission:
    raise RuntimeError("policy store unreachable")


@asynccontextmanager
async def serving(
    decide: Decide, failure_mode: Literal["open", "closed"] = "closed"
) -> AsyncIterator[tuple[pb_grpc.AuthorizationStub, Metrics]]:
    metrics = Metrics()
    server = grpc.aio.server()
    pb_grpc.add_AuthorizationServicer_to_server(
        Authorizer(decide, metrics, failure_mode=failure_mode), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.AuthorizationStub(channel), metrics
    finally:
        await server.stop(None)


def check(
    path: str = CHAT,
    *,
    headers: dict[str, str] | None = None,
    raw_body: bytes = b"",
    body: str = "",
    ip: str = "",
) -> pb.CheckRequest:
    values = {":path": path, ":method": "POST", "content-type": "application/json"}
    values.update(headers or {})
    return pb.CheckRequest(
        attributes=ctx.AttributeContext(
            source=ctx.AttributeContext.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=ip, port_value=51234)
                )
            ),
            request=ctx.AttributeContext.Request(
                http=ctx.AttributeContext.HttpRequest(
                    path=path,
                    method="POST",
                    headers=values,
                    raw_body=raw_body,
                    body=body,
                )
            ),
        )
    )


def header_dict(options: list[base_pb2.HeaderValueOption]) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


async def test_allow_sets_our_headers_and_strips_forged_ones() -> None:
    decide = Recorder(
        Admission(
            None,
            headers={"x-llmtrace-flagged": "true", "x-llmtrace-findings": "pii_email"},
            remove_headers=("x-internal",),
            trace_id="abc123",
        )
    )
    async with serving(decide) as (stub, _):
        answer = await stub.Check(check(headers={"x-llmtrace-trace-id": "forged"}))
    assert answer.status.code == code_pb2.OK
    assert answer.WhichOneof("http_response") == "ok_response"
    ok = answer.ok_response
    assert header_dict(ok.headers) == {
        "x-llmtrace-trace-id": "abc123",
        "x-llmtrace-flagged": "true",
        "x-llmtrace-findings": "pii_email",
    }
    assert {o.append_action for o in ok.headers} == {
        base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    }
    # Everything we set overwrites; only the asked-for header is removed.
    assert list(ok.headers_to_remove) == ["x-internal"]


async def test_allow_without_verdict_removes_client_verdict_headers() -> None:
    async with serving(Recorder()) as (stub, _):
        answer = await stub.Check(check(headers={"x-llmtrace-flagged": "true"}))
    assert answer.status.code == code_pb2.OK
    assert not answer.ok_response.headers
    assert set(answer.ok_response.headers_to_remove) == {
        "x-llmtrace-trace-id",
        "x-llmtrace-flagged",
        "x-llmtrace-findings",
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            CHAT,
            {
                "error": {
                    "message": "Rate limit exceeded; retry in 3 s.",
                    "type": "rate_limit_error",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
        ),
        (
            MESSAGES,
            {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "Rate limit exceeded; retry in 3 s.",
                },
            },
        ),
    ],
)
async def test_rate_limit_denial_answers_429_in_the_client_dialect(
    path: str, expected: dict[str, object]
) -> None:
    denial = Denial(
        429,
        "Rate limit exceeded; retry in 3 s.",
        "rate_limit_exceeded",
        "rate_limited",
        {"retry-after": "3"},
    )
    async with serving(Recorder(Admission(denial, trace_id="t-429"))) as (stub, _):
        answer = await stub.Check(check(path))
    assert answer.status.code == code_pb2.RESOURCE_EXHAUSTED
    denied = answer.denied_response
    assert denied.status.code == 429
    assert header_dict(denied.headers) == {
        "content-type": "application/json",
        "retry-after": "3",
        "x-llmtrace-trace-id": "t-429",
    }
    assert orjson.loads(denied.body) == expected


async def test_forbidden_denial_is_permission_denied() -> None:
    denial = Denial(403, "Your address is blocked.", "ip_blocked", "ip_blocked")
    async with serving(Recorder(Admission(denial))) as (stub, _):
        answer = await stub.Check(check())
    assert answer.status.code == code_pb2.PERMISSION_DENIED
    assert answer.denied_response.status.code == 403
    assert orjson.loads(answer.denied_response.body)["error"]["code"] == "ip_blocked"


async def test_request_attributes_reach_decide() -> None:
    decide = Recorder()
    raw = b'{"model":"m","messages":[{"role":"user","content":"caf\xc3\xa9"}]}'
    headers = {"X-LLMTrace-Tenant-ID": "acme", "x-envoy-auth-partial-body": "false"}
    async with serving(decide) as (stub, _):
        await stub.Check(check(MESSAGES, headers=headers, raw_body=raw, ip="203.0.113.7"))
    [seen] = decide.seen
    assert seen.path == MESSAGES
    assert seen.method == "POST"
    assert seen.body == raw  # raw_body, byte for byte
    assert seen.body_truncated is False
    assert seen.source_ip == "203.0.113.7"  # no port
    assert seen.headers["x-llmtrace-tenant-id"] == "acme"  # names lower-cased


async def test_string_body_partial_flag_and_ipv6_peer() -> None:
    decide = Recorder()
    request = check(headers={"x-envoy-auth-partial-body": "true"}, body="héllo", ip="2001:db8::1")
    async with serving(decide) as (stub, _):
        await stub.Check(request)
    [seen] = decide.seen
    assert seen.body == "héllo".encode()  # without pack_as_bytes Envoy sends a string
    assert seen.body_truncated is True
    assert seen.source_ip == "2001:db8::1"


async def test_no_body_and_no_peer_are_none() -> None:
    decide = Recorder()
    async with serving(decide) as (stub, _):
        await stub.Check(check())
    [seen] = decide.seen
    assert seen.body is None
    assert seen.source_ip is None


async def test_decide_error_fails_closed_with_a_json_500() -> None:
    async with serving(broken, "closed") as (stub, metrics):
        answer = await stub.Check(check(MESSAGES, headers={"x-llmtrace-flagged": "true"}))
    assert answer.status.code == code_pb2.INTERNAL
    denied = answer.denied_response
    assert denied.status.code == 500
    headers = header_dict(denied.headers)
    assert headers["content-type"] == "application/json"
    assert len(headers["x-llmtrace-trace-id"]) == 32
    error = orjson.loads(denied.body)
    assert error["type"] == "error"  # Anthropic shape for /v1/messages
    assert error["error"]["message"] == "Security analysis failed; request refused (fail-closed)."
    text = metrics.render().decode()
    assert 'extproc_errors_total{failure_mode="closed",phase="authz_check"} 1.0' in text


async def test_decide_error_fails_open_and_allows() -> None:
    async with serving(broken, "open") as (stub, metrics):
        answer = await stub.Check(check(headers={"x-llmtrace-flagged": "true"}))
    assert answer.status.code == code_pb2.OK
    ok = answer.ok_response
    assert list(header_dict(ok.headers)) == ["x-llmtrace-trace-id"]
    # A forged verdict must not ride through on the fail-open path either.
    assert "x-llmtrace-flagged" in ok.headers_to_remove
    text = metrics.render().decode()
    assert 'extproc_errors_total{failure_mode="open",phase="authz_check"} 1.0' in text
