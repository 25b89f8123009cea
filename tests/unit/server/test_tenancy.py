"""Tenant ids are derived exactly as LLMTrace derives them."""

from __future__ import annotations

import uuid

from extproc.server.tenancy import agent_from_headers, tenant_from_headers


def test_explicit_tenant_header_wins() -> None:
    headers = {"x-llmtrace-tenant-id": "team-a", "authorization": "Bearer sk-test"}
    assert tenant_from_headers(headers) == "team-a"


def test_tenant_is_uuid5_of_bearer_key() -> None:
    # RFC 4122 v5 in the URL namespace, the value Rust's Uuid::new_v5 gives for "sk-test".
    assert tenant_from_headers({"authorization": "Bearer sk-test"}) == (
        "385ab772-9382-52c5-b1bb-c542f6817b5b"
    )


def test_tenant_from_x_api_key_and_anonymous() -> None:
    assert tenant_from_headers({"x-api-key": "sk-ant-1"}) == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "sk-ant-1")
    )
    assert tenant_from_headers({"authorization": "Basic abc"}) is None
    assert tenant_from_headers({}) is None


def test_agent_header() -> None:
    assert agent_from_headers({"x-llmtrace-agent-id": " bot-7 "}) == "bot-7"
    assert agent_from_headers({}) is None
