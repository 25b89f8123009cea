"""Builders for ext_proc ProcessingResponse messages (the only place that knows their shape)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_map(headers: pb.HttpHeaders, wanted: frozenset[str]) -> dict[str, str]:
    """The `wanted` headers (lower-case names) as a dict; values come in raw_value or value."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        key = h.key.lower()  # Envoy lower-cases already; cheap insurance for other clients
        if key in wanted:
            out[key] = h.raw_value.decode("latin-1") if h.raw_value else h.value
    return out


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> pb.HeaderMutation:
    """A HeaderMutation that overwrites `set_headers` and removes `remove`."""
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1")),
                append_action=_OVERWRITE,
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def _common(
    set_headers: Mapping[str, str] | None, remove: Iterable[str], body: bytes | None
) -> pb.CommonResponse:
    common = pb.CommonResponse()
    remove = list(remove)
    if set_headers or remove:
        common.header_mutation.CopyFrom(header_mutation(set_headers, remove))
    if body is not None:
        common.body_mutation.body = body
    return common


def request_headers_response(
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    mode: processing_mode_pb2.ProcessingMode | None = None,
) -> pb.ProcessingResponse:
    """Continue after request headers, optionally changing the processing mode."""
    resp = pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=_common(set_headers, remove, None))
    )
    if mode is not None:
        resp.mode_override.CopyFrom(mode)
    return resp


def response_headers_response(
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    mode: processing_mode_pb2.ProcessingMode | None = None,
) -> pb.ProcessingResponse:
    """Continue after response headers, optionally changing the response body mode."""
    resp = pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(response=_common(set_headers, remove, None))
    )
    if mode is not None:
        resp.mode_override.CopyFrom(mode)
    return resp


def _with_length(
    set_headers: Mapping[str, str] | None, body: bytes | None
) -> tuple[dict[str, str], list[str]]:
    headers = dict(set_headers or {})
    # A mutated BUFFERED body with a stale content-length makes Envoy answer 500.
    if body is not None:
        headers["content-length"] = str(len(body))
    return headers, []


def request_body_response(
    body: bytes | None = None, set_headers: Mapping[str, str] | None = None
) -> pb.ProcessingResponse:
    """Continue after the buffered request body, optionally replacing it."""
    headers, remove = _with_length(set_headers, body)
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=_common(headers, remove, body))
    )


def response_body_response(
    body: bytes | None = None, set_headers: Mapping[str, str] | None = None
) -> pb.ProcessingResponse:
    """Continue after the buffered response body, optionally replacing it."""
    headers, remove = _with_length(set_headers, body)
    return pb.ProcessingResponse(
        response_body=pb.BodyResponse(response=_common(headers, remove, body))
    )


def streamed_body_response(body: bytes, end_of_stream: bool) -> pb.ProcessingResponse:
    """In FULL_DUPLEX_STREAMED mode: the bytes to send on, and whether the body ends."""
    return pb.ProcessingResponse(
        response_body=pb.BodyResponse(
            response=pb.CommonResponse(
                body_mutation=pb.BodyMutation(
                    streamed_response=pb.StreamedBodyResponse(
                        body=body, end_of_stream=end_of_stream
                    )
                )
            )
        )
    )


def response_trailers_response() -> pb.ProcessingResponse:
    """Continue after response trailers (sent in FULL_DUPLEX_STREAMED mode)."""
    return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


def immediate_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None, details: str = ""
) -> pb.ProcessingResponse:
    """Answer the client directly; the upstream never sees the request."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=header_mutation(all_headers),
            body=body,
            details=details,
        )
    )


def processing_mode(
    *, request_body: int, response_body: int, response_headers: bool = True
) -> processing_mode_pb2.ProcessingMode:
    """A complete mode_override: Envoy replaces the whole mode, so every field is set."""
    mode = processing_mode_pb2.ProcessingMode
    # FULL_DUPLEX_STREAMED requires response trailers to be sent (Envoy rejects it otherwise).
    duplex = response_body == mode.FULL_DUPLEX_STREAMED
    return mode(
        request_header_mode=mode.SEND,
        response_header_mode=mode.SEND if response_headers else mode.SKIP,
        request_body_mode=request_body,
        response_body_mode=response_body,
        request_trailer_mode=mode.SKIP,
        response_trailer_mode=mode.SEND if duplex else mode.SKIP,
    )
