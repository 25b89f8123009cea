"""Addressing values inside a parsed JSON body: read, write back, and print a path."""

from __future__ import annotations

from typing import Any

from extproc.dialects.base import JsonPath


def format_path(path: JsonPath) -> str:
    """Render a path the way users write it: `messages[2].content`, or `body` for the root."""
    out: list[str] = []
    for step in path:
        if isinstance(step, int):
            out.append(f"[{step}]")
        else:
            out.append(f".{step}" if out else step)
    return "".join(out) or "body"


def get_at(body: Any, path: JsonPath) -> Any:
    """The value at `path`; raises KeyError or IndexError when it is not there."""
    node = body
    for step in path:
        node = node[step]
    return node


def set_at(body: Any, path: JsonPath, value: Any) -> None:
    """Replace the value at `path` in place (used to write redacted text back)."""
    if not path:
        # The root cannot be replaced in place; every dialect path has at least one step.
        raise ValueError("cannot replace the body root in place")
    parent = get_at(body, path[:-1])
    last = path[-1]
    # Type checks keep a stale path from silently inserting a key or indexing a dict by int.
    if isinstance(last, int):
        if not isinstance(parent, list):
            raise TypeError(f"{format_path(path[:-1])}: expected array")
        parent[last] = value
    else:
        if not isinstance(parent, dict):
            raise TypeError(f"{format_path(path[:-1])}: expected object")
        if last not in parent:
            raise KeyError(format_path(path))
        parent[last] = value
