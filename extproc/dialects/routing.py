"""Choosing the dialect for a request path."""

from __future__ import annotations

from extproc.dialects.anthropic import AnthropicDialect
from extproc.dialects.base import Dialect
from extproc.dialects.endpoints import ANTHROPIC_PREFIXES, Endpoint, endpoint_for_path, strip_query
from extproc.dialects.jsonbody import parse_json
from extproc.dialects.openai import OpenAIDialect

# Dialects are stateless, so one instance each serves every request.
OPENAI = OpenAIDialect()
ANTHROPIC = AnthropicDialect()

_BY_ENDPOINT: dict[Endpoint, Dialect] = {
    Endpoint.CHAT_COMPLETIONS: OPENAI,
    Endpoint.COMPLETIONS: OPENAI,
    Endpoint.RESPONSES: OPENAI,
    Endpoint.MESSAGES: ANTHROPIC,
    Endpoint.COMPLETE: ANTHROPIC,
}


def dialect_for_path(path: str) -> Dialect | None:
    """The dialect whose body format this path carries, or None for paths we do not parse."""
    endpoint = endpoint_for_path(path)
    return None if endpoint is None else _BY_ENDPOINT[endpoint]


def default_dialect_for_path(path: str) -> Dialect:
    """The dialect to shape errors in for any path: Anthropic under its prefixes, else OpenAI."""
    found = dialect_for_path(path)
    if found is not None:
        return found
    clean = strip_query(path)
    for prefix in ANTHROPIC_PREFIXES:
        # Anywhere in the path (behind a route prefix), ending at a segment boundary,
        # so "/v1/messages/count_tokens" is Anthropic but "/v1/completions" is not.
        start = clean.find(prefix)
        while start != -1:
            end = start + len(prefix)
            if end == len(clean) or clean[end] == "/":
                return ANTHROPIC
            start = clean.find(prefix, start + 1)
    return OPENAI


__all__ = ["ANTHROPIC", "OPENAI", "default_dialect_for_path", "dialect_for_path", "parse_json"]
