"""Parsing a raw HTTP body into JSON, with a DialectError the client can act on."""

from __future__ import annotations

import json
from typing import Any

import orjson

from extproc.dialects.base import DialectError


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def parse_json(body: bytes) -> Any:
    """Parse a body strictly: invalid JSON or UTF-8, NaN, and duplicate keys raise DialectError.

    Duplicate keys are refused because parsers disagree on which copy wins: scanning one copy
    while the upstream reads the other would be a bypass. orjson validates (UTF-8, lone
    surrogates, non-finite numbers); the stdlib decoder then finds duplicates and keeps
    integers beyond 64 bits exact, so a rewritten body says what the client sent.
    """
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DialectError(f"request body is not valid JSON: {exc}") from None
    try:
        return _STRICT.decode(body.decode("utf-8"))
    except _DuplicateKey as exc:
        raise DialectError(
            f"request body has duplicate key {exc.args[0]!r}; ambiguous JSON is refused"
        ) from None


def dump_json(value: Any) -> bytes:
    """Serialise a (possibly rewritten) body compactly, keeping big integers exact."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
