"""The OpenAI Responses API (`/v1/responses`): instructions, input items and output items."""

from __future__ import annotations

from typing import Any

from extproc.detect.findings import Role
from extproc.dialects.base import JsonPath, Segment
from extproc.dialects.shape import (
    expect_object,
    expect_string,
    optional_array,
    require,
    text,
    tool_descriptions,
    wrong_shape,
)

_MESSAGE_ROLES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "developer": Role.DEVELOPER,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
}

# Text-bearing content part types and the field holding their text; image, file
# and audio parts are skipped.
_PART_TEXT_FIELDS: dict[str, str] = {
    "input_text": "text",
    "output_text": "text",
    "text": "text",
    "refusal": "refusal",
}


def extract_request(body: Any) -> list[Segment]:
    """Segments of a Responses API request: `instructions` and every `input` item."""
    root = expect_object(body, ())
    out = text(Role.SYSTEM, root.get("instructions"), ("instructions",))
    value = root.get("input")
    if value is None or isinstance(value, str):
        out += text(Role.USER, value, ("input",))
    elif isinstance(value, list):
        for i, raw in enumerate(value):
            out += _item(raw, ("input", i), output=False)
    else:
        raise wrong_shape(("input",), "string or array", value)
    return out + tool_descriptions(root)


def extract_response(body: Any) -> list[Segment]:
    """Segments of a Responses API response: message text and tool-call arguments in `output`."""
    root = expect_object(body, ())
    out: list[Segment] = []
    for i, raw in enumerate(optional_array(root.get("output"), ("output",))):
        out += _item(raw, ("output", i), output=True)
    return out


def _item(raw: Any, at: JsonPath, *, output: bool) -> list[Segment]:
    """One input or output item; item types without scannable text are skipped."""
    item = expect_object(raw, at)
    kind = item.get("type")
    if kind is not None:
        kind = expect_string(kind, (*at, "type"))
    call = Role.OUTPUT if output else Role.TOOL_CALL
    result = Role.OUTPUT if output else Role.TOOL_RESULT
    # An "easy input message" has a role and content but no type.
    if kind is None or kind == "message":
        role_name = expect_string(require(item, "role", at), (*at, "role"))
        role = Role.OUTPUT if output else _MESSAGE_ROLES.get(role_name, Role.USER)
        return _content(item.get("content"), (*at, "content"), role)
    if kind == "function_call":
        return text(call, item.get("arguments"), (*at, "arguments"))
    if kind == "custom_tool_call":
        return text(call, item.get("input"), (*at, "input"))
    if kind in ("function_call_output", "custom_tool_call_output"):
        return _content(item.get("output"), (*at, "output"), result)
    if kind == "mcp_call":
        args = text(call, item.get("arguments"), (*at, "arguments"))
        return args + text(result, item.get("output"), (*at, "output"))
    return []


def _content(value: Any, at: JsonPath, role: Role) -> list[Segment]:
    """A message content or tool output: a string, null, or an array of typed parts."""
    if value is None or isinstance(value, str):
        return text(role, value, at)
    if not isinstance(value, list):
        raise wrong_shape(at, "string or array", value)
    out: list[Segment] = []
    for k, raw in enumerate(value):
        part = expect_object(raw, (*at, k))
        kind = expect_string(require(part, "type", (*at, k)), (*at, k, "type"))
        field = _PART_TEXT_FIELDS.get(kind)
        if field is not None:
            out += text(role, part.get(field), (*at, k, field))
    return out
