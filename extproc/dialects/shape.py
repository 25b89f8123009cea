"""Shape checks for parsed JSON that fail with a DialectError naming the exact JSON path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from extproc.detect.findings import Role
from extproc.dialects.base import DialectError, JsonPath, Segment
from extproc.dialects.jsonpath import format_path


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def wrong_shape(path: JsonPath, expected: str, value: Any) -> DialectError:
    """The error for a value of the wrong JSON type at `path`."""
    return DialectError(f"{format_path(path)}: expected {expected}, got {type_name(value)}")


def expect_object(value: Any, path: JsonPath) -> dict[str, Any]:
    """`value` as a JSON object, or a DialectError."""
    if not isinstance(value, dict):
        raise wrong_shape(path, "object", value)
    return value


def expect_array(value: Any, path: JsonPath) -> list[Any]:
    """`value` as a JSON array, or a DialectError."""
    if not isinstance(value, list):
        raise wrong_shape(path, "array", value)
    return value


def optional_array(value: Any, path: JsonPath) -> list[Any]:
    """`value` as a JSON array, treating absent/null as empty."""
    return [] if value is None else expect_array(value, path)


def optional_object(value: Any, path: JsonPath) -> dict[str, Any]:
    """`value` as a JSON object, treating absent/null as empty."""
    return {} if value is None else expect_object(value, path)


def require(obj: dict[str, Any], key: str, path: JsonPath) -> Any:
    """`obj[key]`, or a DialectError naming the missing field."""
    if key not in obj:
        raise DialectError(f"{format_path((*path, key))}: required field is missing")
    return obj[key]


def expect_string(value: Any, path: JsonPath) -> str:
    """`value` as a string, or a DialectError."""
    if not isinstance(value, str):
        raise wrong_shape(path, "string", value)
    return value


def text(role: Role, value: Any, path: JsonPath) -> list[Segment]:
    """One segment for an optional string field; absent/null/empty gives none."""
    if value is None:
        return []
    if not isinstance(value, str):
        raise wrong_shape(path, "string", value)
    # Empty strings carry nothing to scan or redact, so they are not segments.
    return [Segment(role, value, path)] if value else []


def required_text(role: Role, obj: dict[str, Any], key: str, path: JsonPath) -> list[Segment]:
    """One segment for a field that must be present and a string (possibly empty)."""
    value = expect_string(require(obj, key, path), (*path, key))
    return text(role, value, (*path, key))


def string_leaves(role: Role, value: Any, path: JsonPath) -> list[Segment]:
    """One segment per non-empty string inside an arbitrary JSON value, in document order."""
    return [Segment(role, s, p) for s, p in _walk_strings(value, path) if s]


def tool_descriptions(root: dict[str, Any]) -> list[Segment]:
    """Every `description` string inside the request's `tools` definitions.

    Tool descriptions reach the model as instructions, and with MCP they come from third
    parties: an injection hidden there ("tool poisoning") is scanned like a tool result.
    """
    tools = optional_array(root.get("tools"), ("tools",))
    leaves = string_leaves(Role.TOOL_RESULT, tools, ("tools",))
    return [s for s in leaves if s.path[-1] == "description"]


def _walk_strings(value: Any, path: JsonPath) -> Iterator[tuple[str, JsonPath]]:
    # Iterative on purpose: tool inputs can nest deeper than Python's recursion limit.
    stack: list[tuple[Any, JsonPath]] = [(value, path)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, str):
            yield node, at
        elif isinstance(node, dict):
            stack.extend((v, (*at, k)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, (*at, i)) for i, v in reversed(list(enumerate(node))))
