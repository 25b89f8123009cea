"""Which LLM endpoint a request path names, independent of any route prefix or query."""

from __future__ import annotations

from enum import StrEnum


class Endpoint(StrEnum):
    """The endpoints whose bodies the dialects understand."""

    CHAT_COMPLETIONS = "chat_completions"  # OpenAI /v1/chat/completions
    COMPLETIONS = "completions"  # OpenAI legacy /v1/completions
    RESPONSES = "responses"  # OpenAI /v1/responses
    MESSAGES = "messages"  # Anthropic /v1/messages
    COMPLETE = "complete"  # Anthropic legacy /v1/complete


# Order matters: "/chat/completions" must be tried before "/completions".
# OpenAI endpoints also match without "/v1" because Azure OpenAI serves
# ".../openai/deployments/{name}/chat/completions"; Anthropic paths always carry
# "/v1", and a bare "/messages" is too generic a suffix to claim.
_SUFFIXES: tuple[tuple[str, Endpoint], ...] = (
    ("/chat/completions", Endpoint.CHAT_COMPLETIONS),
    ("/completions", Endpoint.COMPLETIONS),
    ("/responses", Endpoint.RESPONSES),
    ("/v1/messages", Endpoint.MESSAGES),
    ("/v1/complete", Endpoint.COMPLETE),
)

ANTHROPIC_PREFIXES: tuple[str, ...] = ("/v1/messages", "/v1/complete")


def strip_query(path: str) -> str:
    """The path, lower-cased, without its query string, fragment, or one trailing slash."""
    # Lower-cased because some gateways route case-insensitively: a path that reaches the
    # upstream's chat endpoint must be scanned as chat, however it is spelt.
    path = path.split("?", 1)[0].split("#", 1)[0].lower()
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def endpoint_for_path(path: str) -> Endpoint | None:
    """The endpoint a request path ends with (any route prefix allowed), or None."""
    clean = strip_query(path)
    for suffix, endpoint in _SUFFIXES:
        if clean.endswith(suffix):
            return endpoint
    return None
