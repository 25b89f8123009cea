"""Who is calling: tenant and agent ids from request headers, as LLMTrace derives them."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping

TENANT_HEADER = "x-llmtrace-tenant-id"
AGENT_HEADER = "x-llmtrace-agent-id"
TENANCY_HEADERS = (TENANT_HEADER, AGENT_HEADER, "authorization", "x-api-key")


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The caller's provider API key: `Authorization: Bearer <key>` or `x-api-key`."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def tenant_from_headers(headers: Mapping[str, str]) -> str | None:
    """Explicit tenant header, else UUIDv5(NAMESPACE_URL, api key), else None (anonymous)."""
    explicit = headers.get(TENANT_HEADER, "").strip()
    if explicit:
        return explicit
    key = api_key_from_headers(headers)
    return None if key is None else _tenant_for_key(key)


@functools.lru_cache(maxsize=4096)
def _tenant_for_key(key: str) -> str:
    # A handful of keys send most traffic; SHA-1 + UUID per request is measurable.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def agent_from_headers(headers: Mapping[str, str]) -> str | None:
    """The `X-LLMTrace-Agent-ID` header, if any."""
    return headers.get(AGENT_HEADER, "").strip() or None
