"""Parsing a raw HTTP body into JSON, with a DialectError the client can act on."""

from __future__ import annotations

from typing import Any

import orjson

from extproc.dialects.base import DialectError


def parse_json(body: bytes) -> Any:
    """Parse a request or response body; invalid JSON or UTF-8 raises DialectError."""
    try:
        # orjson rejects invalid UTF-8 and lone surrogates itself, so one except covers all.
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DialectError(f"request body is not valid JSON: {exc}") from None
