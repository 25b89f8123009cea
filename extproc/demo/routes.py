"""Which payload a request gets: path and method routing, JSON checks, echo mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from extproc.demo import anthropic_api, openai_api
from extproc.demo.recording import Recorder
from extproc.demo.reply import Reply, Turn, estimate_tokens, reply_text
from extproc.detect.findings import Role
from extproc.dialects.base import Dialect, DialectError, Segment
from extproc.dialects.endpoints import Endpoint, endpoint_for_path, strip_query
from extproc.dialects.jsonbody import parse_json
from extproc.dialects.routing import default_dialect_for_path, dialect_for_path

DEFAULT_MODEL = "demo-model"
HEALTH_PATH = "/healthz"
RECORDING_PATH = "/__demo/requests"

# The legacy Anthropic /v1/complete endpoint is not served: nothing in the demo uses it.
_HANDLERS: dict[Endpoint, Callable[[Turn], Reply]] = {
    Endpoint.CHAT_COMPLETIONS: openai_api.chat_completions,
    Endpoint.COMPLETIONS: openai_api.completions,
    Endpoint.RESPONSES: openai_api.responses,
    Endpoint.MESSAGES: anthropic_api.messages,
}


def is_recorded(path: str) -> bool:
    """Health probes and the recording endpoint itself are not worth recording."""
    clean = strip_query(path)
    return clean != HEALTH_PATH and not clean.startswith("/__demo/")


def respond(method: str, path: str, body: bytes, recorder: Recorder) -> Reply:
    """The reply to one request."""
    clean = strip_query(path)
    if clean == HEALTH_PATH:
        return (
            Reply(body={"status": "ok"}) if method in ("GET", "HEAD") else _not_allowed(path, "GET")
        )
    if clean == RECORDING_PATH:
        return _recording(method, path, recorder)
    if clean.endswith("/v1/models"):
        return Reply(body=openai_api.models()) if method == "GET" else _not_allowed(path, "GET")
    endpoint = endpoint_for_path(clean)
    handler = _HANDLERS.get(endpoint) if endpoint is not None else None
    dialect = dialect_for_path(clean)
    if handler is None or dialect is None:
        message = f"Unknown request URL: {method} {path}"
        return _error(default_dialect_for_path(path), 404, message, "unknown_url")
    if method != "POST":
        return _not_allowed(path, "POST")
    try:
        parsed = parse_json(body)
        segments = dialect.extract_request(path, parsed)
    except DialectError as exc:
        return _error(dialect, 400, str(exc), "invalid_request")
    return handler(_turn(parsed, segments))


def _turn(body: dict[str, Any], segments: list[Segment]) -> Turn:
    # extract_request succeeded, so the body is an object; option fields are read leniently.
    model = body.get("model")
    model = model if isinstance(model, str) and model else DEFAULT_MODEL
    users = [s.text for s in segments if s.role is Role.USER]
    options = body.get("stream_options")
    instructions = body.get("instructions")
    return Turn(
        model=model,
        text=reply_text(model, users[-1] if users else None),
        input_tokens=estimate_tokens("".join(s.text for s in segments)),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        instructions=instructions if isinstance(instructions, str) else None,
    )


def _recording(method: str, path: str, recorder: Recorder) -> Reply:
    if method == "GET":
        return Reply(body={"requests": [r.to_json() for r in recorder.snapshot()]})
    if method == "DELETE":
        cleared = len(recorder.snapshot())
        recorder.clear()
        return Reply(body={"cleared": cleared})
    return _not_allowed(path, "GET, DELETE")


def _error(dialect: Dialect, status: int, message: str, code: str) -> Reply:
    return Reply(status=status, body=dialect.error_body(status, message, code))


def _not_allowed(path: str, allow: str) -> Reply:
    dialect = default_dialect_for_path(path)
    reply = _error(dialect, 405, f"Method not allowed; use {allow}", "method_not_allowed")
    return Reply(status=reply.status, body=reply.body, headers={"Allow": allow})
