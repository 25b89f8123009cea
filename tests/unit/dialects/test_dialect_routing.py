"""Path → dialect routing and JSON parsing."""

from __future__ import annotations

import pytest

from extproc.dialects import (
    ANTHROPIC,
    OPENAI,
    DialectError,
    default_dialect_for_path,
    dialect_for_path,
    parse_json,
)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/chat/completions?stream=true", "openai"),
        ("/openai/v1/chat/completions", "openai"),
        ("/api/v1/chat/completions/", "openai"),
        ("/openai/deployments/gpt4/chat/completions?api-version=2024-10-21", "openai"),
        ("/v1/completions", "openai"),
        ("/v1/responses", "openai"),
        ("/v1/messages", "anthropic"),
        ("/anthropic/v1/messages?beta=true", "anthropic"),
        ("/v1/complete", "anthropic"),
    ],
)
def test_dialect_for_path(path: str, name: str) -> None:
    dialect = dialect_for_path(path)
    assert dialect is not None
    assert dialect.name == name


@pytest.mark.parametrize(
    "path",
    ["/", "/v1/models", "/v1/embeddings", "/v1/messages/count_tokens", "/messages", "/healthz"],
)
def test_unparsed_paths(path: str) -> None:
    assert dialect_for_path(path) is None


def test_singletons() -> None:
    assert dialect_for_path("/v1/messages") is ANTHROPIC
    assert dialect_for_path("/x/v1/responses") is OPENAI


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/messages/count_tokens", ANTHROPIC),
        ("/v1/messages/batches?limit=1", ANTHROPIC),
        ("/proxy/v1/complete/x", ANTHROPIC),
        ("/v1/models", OPENAI),
        ("/v1/messagesx", OPENAI),
        ("/v1/embeddings", OPENAI),
        ("/", OPENAI),
    ],
)
def test_default_dialect_for_path(path: str, expected: object) -> None:
    assert default_dialect_for_path(path) is expected


def test_parse_json() -> None:
    assert parse_json(b'{"a": [1, "\\u00e9"]}') == {"a": [1, "é"]}


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'"\xed\xa0\x80"', b"[" * 5000, b"NaN"])
def test_parse_json_errors(raw: bytes) -> None:
    with pytest.raises(DialectError, match=r"^request body is not valid JSON: "):
        parse_json(raw)
