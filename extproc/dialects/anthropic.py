"""The Anthropic wire format: Messages API and the legacy Text Completions API."""

from __future__ import annotations

from typing import Any

import orjson

from extproc.detect.findings import Role
from extproc.dialects.base import DialectError, JsonPath, Segment
from extproc.dialects.endpoints import Endpoint, endpoint_for_path
from extproc.dialects.shape import (
    expect_array,
    expect_object,
    expect_string,
    optional_object,
    require,
    required_text,
    string_leaves,
    text,
    tool_descriptions,
    wrong_shape,
)

# Unknown roles are scanned as user text: the strictest rules apply to text of unknown origin.
_ROLES: dict[str, Role] = {"user": Role.USER, "assistant": Role.ASSISTANT}

# Anthropic's documented error types; other 4xx are invalid_request_error and
# other 5xx api_error, as Anthropic itself does.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """The Anthropic error `type` for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


class AnthropicDialect:
    """The Anthropic API (`/v1/messages`, legacy `/v1/complete`)."""

    name = "anthropic"

    def extract_request(self, path: str, body: Any) -> list[Segment]:
        """Text segments of a messages or complete request body."""
        endpoint = endpoint_for_path(path)
        if endpoint is Endpoint.MESSAGES:
            return _messages_request(body)
        if endpoint is Endpoint.COMPLETE:
            root = expect_object(body, ())
            return text(Role.USER, root.get("prompt"), ("prompt",))
        raise DialectError(f"the anthropic dialect does not handle path {path!r}")

    def extract_response(self, path: str, body: Any) -> list[Segment]:
        """Text segments the model produced in a non-streaming response body."""
        endpoint = endpoint_for_path(path)
        root = expect_object(body, ())
        if endpoint is Endpoint.MESSAGES:
            return _blocks(root.get("content"), ("content",), Role.OUTPUT, output=True)
        if endpoint is Endpoint.COMPLETE:
            return text(Role.OUTPUT, root.get("completion"), ("completion",))
        raise DialectError(f"the anthropic dialect does not handle path {path!r}")

    def error_body(self, status: int, message: str, code: str | None = None) -> bytes:
        """`{"type": "error", "error": {type, message}}` as the Anthropic SDKs parse it."""
        # Anthropic errors have no `code`; the `type` (derived from status) carries it.
        del code
        error = {"type": error_type_for_status(status), "message": message}
        return orjson.dumps({"type": "error", "error": error})


def _messages_request(body: Any) -> list[Segment]:
    root = expect_object(body, ())
    out = _blocks(root.get("system"), ("system",), Role.SYSTEM, output=False)
    messages = expect_array(require(root, "messages", ()), ("messages",))
    for i, raw in enumerate(messages):
        at: JsonPath = ("messages", i)
        message = expect_object(raw, at)
        role_name = expect_string(require(message, "role", at), (*at, "role"))
        role = _ROLES.get(role_name, Role.USER)
        out += _blocks(message.get("content"), (*at, "content"), role, output=False)
    return out + tool_descriptions(root)


def _blocks(value: Any, at: JsonPath, role: Role, *, output: bool) -> list[Segment]:
    """A content field: a string, null, or an array of content blocks."""
    if value is None or isinstance(value, str):
        return text(role, value, at)
    if not isinstance(value, list):
        raise wrong_shape(at, "string or array", value)
    out: list[Segment] = []
    for k, raw in enumerate(value):
        out += _block(raw, (*at, k), role, output=output)
    return out


def _block(raw: Any, at: JsonPath, role: Role, *, output: bool) -> list[Segment]:
    """One content block; images, thinking and server-tool blocks carry nothing we scan."""
    block = expect_object(raw, at)
    kind = expect_string(require(block, "type", at), (*at, "type"))
    if kind == "text":
        return required_text(role, block, "text", at)
    if kind == "tool_use":
        # One segment per string leaf keeps every path exact, so redaction
        # rewrites a single argument value and the input stays a valid object.
        call_role = Role.OUTPUT if output else Role.TOOL_CALL
        return string_leaves(call_role, block.get("input"), (*at, "input"))
    if kind == "tool_result" and not output:
        # A tool result's blocks are tool text, whatever role carried them.
        return _blocks(block.get("content"), (*at, "content"), Role.TOOL_RESULT, output=False)
    if kind == "document" and not output:
        # Plain-text documents are an indirect-injection channel like any other text.
        source = optional_object(block.get("source"), (*at, "source"))
        if source.get("type") == "text":
            return text(role, source.get("data"), (*at, "source", "data"))
        if source.get("type") == "content":
            return _blocks(source.get("content"), (*at, "source", "content"), role, output=False)
    return []
