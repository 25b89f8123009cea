"""The OpenAI wire format: chat completions, legacy completions and the Responses API."""

from __future__ import annotations

from typing import Any

import orjson

from extproc.detect.findings import Role
from extproc.dialects import openai_responses
from extproc.dialects.base import DialectError, JsonPath, Segment
from extproc.dialects.endpoints import Endpoint, endpoint_for_path
from extproc.dialects.shape import (
    expect_array,
    expect_object,
    expect_string,
    optional_array,
    optional_object,
    require,
    required_text,
    text,
    tool_descriptions,
    wrong_shape,
)

# "function" is the pre-tools name for a tool result message. Unknown roles are
# scanned as user text: the strictest rules apply to text of unknown origin.
_CHAT_ROLES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "developer": Role.DEVELOPER,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL_RESULT,
    "function": Role.TOOL_RESULT,
}

# The SDKs map errors to exception classes by HTTP status alone; `type` is for
# humans and logs, so it follows OpenAI's own names where they exist.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for_status(status: int) -> str:
    """The OpenAI error `type` for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAIDialect:
    """OpenAI-compatible APIs (OpenAI, Azure OpenAI, vLLM, OpenRouter, ...)."""

    name = "openai"

    def extract_request(self, path: str, body: Any) -> list[Segment]:
        """Text segments of a chat, completions or responses request body."""
        endpoint = endpoint_for_path(path)
        if endpoint is Endpoint.CHAT_COMPLETIONS:
            return _chat_request(body)
        if endpoint is Endpoint.COMPLETIONS:
            return _completions_request(body)
        if endpoint is Endpoint.RESPONSES:
            return openai_responses.extract_request(body)
        raise DialectError(f"the openai dialect does not handle path {path!r}")

    def extract_response(self, path: str, body: Any) -> list[Segment]:
        """Text segments the model produced in a non-streaming response body."""
        endpoint = endpoint_for_path(path)
        if endpoint is Endpoint.CHAT_COMPLETIONS:
            return _chat_response(body)
        if endpoint is Endpoint.COMPLETIONS:
            return _completions_response(body)
        if endpoint is Endpoint.RESPONSES:
            return openai_responses.extract_response(body)
        raise DialectError(f"the openai dialect does not handle path {path!r}")

    def error_body(self, status: int, message: str, code: str | None = None) -> bytes:
        """`{"error": {message, type, param, code}}` as the OpenAI SDKs parse it."""
        error = {"message": message, "type": error_type_for_status(status), "param": None}
        return orjson.dumps({"error": {**error, "code": code}})


def _chat_request(body: Any) -> list[Segment]:
    root = expect_object(body, ())
    messages = expect_array(require(root, "messages", ()), ("messages",))
    out: list[Segment] = []
    for i, raw in enumerate(messages):
        at: JsonPath = ("messages", i)
        message = expect_object(raw, at)
        role_name = expect_string(require(message, "role", at), (*at, "role"))
        out += _chat_message(message, at, _CHAT_ROLES.get(role_name, Role.USER), Role.TOOL_CALL)
    return out + tool_descriptions(root)


def _chat_message(
    message: dict[str, Any], at: JsonPath, role: Role, call_role: Role
) -> list[Segment]:
    """Content, refusal and tool-call arguments of one chat message (request or response)."""
    out = _content_parts(message.get("content"), (*at, "content"), role)
    out += text(role, message.get("refusal"), (*at, "refusal"))
    calls_at: JsonPath = (*at, "tool_calls")
    for j, raw in enumerate(optional_array(message.get("tool_calls"), calls_at)):
        call = expect_object(raw, (*calls_at, j))
        for kind, field in (("function", "arguments"), ("custom", "input")):
            fn = optional_object(call.get(kind), (*calls_at, j, kind))
            # Function arguments are a JSON-encoded string, custom tool input free text;
            # both are scanned (and redacted) as one string.
            out += text(call_role, fn.get(field), (*calls_at, j, kind, field))
    legacy = optional_object(message.get("function_call"), (*at, "function_call"))
    out += text(call_role, legacy.get("arguments"), (*at, "function_call", "arguments"))
    return out


def _content_parts(value: Any, at: JsonPath, role: Role) -> list[Segment]:
    """A chat `content`: a string, null, or an array of typed parts (non-text parts skipped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return text(role, value, at)
    if not isinstance(value, list):
        raise wrong_shape(at, "string or array", value)
    out: list[Segment] = []
    for k, raw in enumerate(value):
        part = expect_object(raw, (*at, k))
        kind = expect_string(require(part, "type", (*at, k)), (*at, k, "type"))
        if kind == "text":
            out += required_text(role, part, "text", (*at, k))
        elif kind == "refusal":
            out += text(role, part.get("refusal"), (*at, k, "refusal"))
    return out


def _completions_request(body: Any) -> list[Segment]:
    root = expect_object(body, ())
    out: list[Segment] = []
    prompt = root.get("prompt")
    if isinstance(prompt, list):
        for i, item in enumerate(prompt):
            # Token-id prompts (ints, or arrays of ints) carry no text we can scan.
            if isinstance(item, str):
                out += text(Role.USER, item, ("prompt", i))
            elif not isinstance(item, int | list) or isinstance(item, bool):
                raise wrong_shape(("prompt", i), "string or token array", item)
    elif prompt is not None and not isinstance(prompt, str):
        raise wrong_shape(("prompt",), "string or array", prompt)
    else:
        out += text(Role.USER, prompt, ("prompt",))
    out += text(Role.USER, root.get("suffix"), ("suffix",))
    return out


def _choices(body: Any) -> list[tuple[dict[str, Any], JsonPath]]:
    """Each choice object with its path; a body without `choices` has none."""
    root = expect_object(body, ())
    choices = optional_array(root.get("choices"), ("choices",))
    return [(expect_object(c, ("choices", i)), ("choices", i)) for i, c in enumerate(choices)]


def _chat_response(body: Any) -> list[Segment]:
    out: list[Segment] = []
    for choice, at in _choices(body):
        message = optional_object(choice.get("message"), (*at, "message"))
        out += _chat_message(message, (*at, "message"), Role.OUTPUT, Role.OUTPUT)
    return out


def _completions_response(body: Any) -> list[Segment]:
    out: list[Segment] = []
    for choice, at in _choices(body):
        out += text(Role.OUTPUT, choice.get("text"), (*at, "text"))
    return out
