"""The ext_authz edge: Envoy's `envoy.service.auth.v3.Authorization/Check`, one call per request.

For meshes that only allow ext_authz (Istio `AuthorizationPolicy` CUSTOM). Envoy sends the
request headers and, with `with_request_body`, the buffered body; the answer allows the
request (adding headers to it on the way upstream) or denies it with a JSON error body in the
client's own dialect. The same gRPC server serves this beside ext_proc.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from extproc.dialects.routing import default_dialect_for_path
from extproc.policy.gate import Admission, AuthzInput, Denial
from extproc.server.processor import FINDINGS_HEADER, FLAGGED_HEADER, TRACE_HEADER
from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.authz")

Decide = Callable[[AuthzInput], Awaitable[Admission]]

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"  # Envoy's marker for a truncated body
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# Our headers reach the upstream (and, copied by the route, the client) only when we set
# them, never as the client sent them.
_OWN_HEADERS = (TRACE_HEADER, FLAGGED_HEADER, FINDINGS_HEADER)
_PHASE = "authz_check"  # label in extproc_phase_duration_seconds and extproc_errors
FAIL_CLOSED_MESSAGE = "Security analysis failed; request refused (fail-closed)."


def check_input(request: pb.CheckRequest) -> AuthzInput:
    """What the policy needs from a CheckRequest: path, method, headers, peer and body."""
    http = request.attributes.request.http
    headers: dict[str, str] = {}
    for key, value in http.headers.items():
        headers[key.lower()] = value  # Envoy already joins repeated headers with ","
    # With `encode_raw_headers: true` Envoy sends header_map instead; keep the first value.
    for h in http.header_map.headers:
        headers.setdefault(h.key.lower(), h.raw_value.decode("latin-1") if h.raw_value else h.value)
    body: bytes | None = None
    if http.raw_body:  # `pack_as_bytes: true`: the bytes exactly as the client sent them
        body = http.raw_body
    elif http.body:
        body = http.body.encode()
    address = request.attributes.source.address.socket_address.address
    return AuthzInput(
        path=http.path or headers.get(":path", ""),
        method=http.method or headers.get(":method", ""),
        headers=headers,
        source_ip=address or None,
        body=body,
        body_truncated=headers.get(PARTIAL_BODY_HEADER, "").strip().lower() == "true",
    )


def _header_options(headers: Mapping[str, str]) -> list[base_pb2.HeaderValueOption]:
    # `value`, not `raw_value`: Envoy's ext_authz client reads header values from `value`.
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE
        )
        for k, v in headers.items()
    ]


def allow_response(headers: Mapping[str, str], remove: Iterable[str] = ()) -> pb.CheckResponse:
    """Status OK: Envoy sets `headers` and removes `remove` on the upstream request."""
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=pb.OkHttpResponse(
            headers=_header_options(headers), headers_to_remove=list(remove)
        ),
    )


def deny_response(
    path: str, status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> pb.CheckResponse:
    """A denial Envoy answers with: HTTP `status`, the error JSON of the client's dialect."""
    body = default_dialect_for_path(path).error_body(status, message, code)
    all_headers = {"content-type": "application/json", **(headers or {})}
    # Any non-OK gRPC code denies; the code only tells logs and Envoy's tracing why.
    if status == 429:
        rpc_code = code_pb2.RESOURCE_EXHAUSTED
    elif status >= 500:
        rpc_code = code_pb2.INTERNAL
    else:
        rpc_code = code_pb2.PERMISSION_DENIED
    return pb.CheckResponse(
        status=status_pb2.Status(code=rpc_code, message=message),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=_header_options(all_headers),
            body=body.decode(),
        ),
    )


def _new_trace_id() -> str:
    # Same shape as the ext_proc edge's trace ids (StreamState.trace_id).
    return f"{random.getrandbits(128):032x}"


class Authorizer(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    """grpc.aio servicer for ext_authz: asks `decide`, answers allow or deny, never errors."""

    def __init__(
        self, decide: Decide, metrics: Metrics, *, failure_mode: Literal["open", "closed"]
    ) -> None:
        self._decide = decide
        self._metrics = metrics
        self._failure_mode = failure_mode

    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext | None
    ) -> pb.CheckResponse:
        """Judge one HTTP request before it goes upstream."""
        started = time.perf_counter()
        path = request.attributes.request.http.path
        try:
            authz_input = check_input(request)
            admission = await self._decide(authz_input)
            response = self._answer(authz_input.path, admission)
            result = "denied" if admission.denial is not None else "allowed"
        except Exception:
            # A failed RPC would leave the choice to Envoy's failure_mode_allow; answering
            # ourselves keeps the JSON error body and the trace id either way.
            response = self._failure(path)
            result = "error"
        metrics = self._metrics
        metrics.inc(metrics.authz_checks, result)
        metrics.child(metrics.phase_seconds, _PHASE).observe(time.perf_counter() - started)
        return response

    def _answer(self, path: str, admission: Admission) -> pb.CheckResponse:
        trace = {TRACE_HEADER: admission.trace_id} if admission.trace_id else {}
        denial = admission.denial
        if denial is not None:
            return _denied(path, denial, trace)
        headers = {**trace, **admission.headers}
        remove = (*_OWN_HEADERS, *admission.remove_headers)
        return allow_response(headers, [h for h in dict.fromkeys(remove) if h not in headers])

    def _failure(self, path: str) -> pb.CheckResponse:
        """Our own bug or a timeout in `decide`: answer per failure_mode."""
        trace_id = _new_trace_id()
        log.exception("authz check failed trace=%s path=%s", trace_id, path)
        metrics = self._metrics
        metrics.inc(metrics.errors, _PHASE, self._failure_mode)
        trace = {TRACE_HEADER: trace_id}
        if self._failure_mode == "closed":
            return deny_response(path, 500, FAIL_CLOSED_MESSAGE, "analysis_failed", trace)
        return allow_response(trace, [h for h in _OWN_HEADERS if h != TRACE_HEADER])


def _denied(path: str, denial: Denial, trace: Mapping[str, str]) -> pb.CheckResponse:
    return deny_response(
        path, denial.status, denial.message, denial.code, {**denial.headers, **trace}
    )
