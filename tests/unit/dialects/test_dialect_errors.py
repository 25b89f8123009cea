"""Error bodies in each client's own shape."""

from __future__ import annotations

import json

import pytest

from extproc.dialects import ANTHROPIC, OPENAI, DialectError, parse_json


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (413, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_openai_error_shape(status: int, kind: str) -> None:
    raw = OPENAI.error_body(status, "Request blocked by policy", "content_policy_violation")
    assert json.loads(raw) == {
        "error": {
            "message": "Request blocked by policy",
            "type": kind,
            "param": None,
            "code": "content_policy_violation",
        }
    }
    assert b" " not in raw.replace(b"Request blocked by policy", b"")  # compact


def test_openai_error_code_defaults_to_null() -> None:
    assert json.loads(OPENAI.error_body(400, "bad"))["error"]["code"] is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (418, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_shape(status: int, kind: str) -> None:
    raw = ANTHROPIC.error_body(status, "Prompt injection detected", "prompt_injection")
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": kind, "message": "Prompt injection detected"},
    }


def test_error_message_is_escaped() -> None:
    message = 'quote " backslash \\ newline \n unicode é'
    assert json.loads(OPENAI.error_body(400, message))["error"]["message"] == message
    assert json.loads(ANTHROPIC.error_body(400, message))["error"]["message"] == message


def test_duplicate_keys_are_refused_anywhere() -> None:
    for raw in (
        b'{"messages": [{"role": "user", "content": "hi"}], "messages": []}',
        b'{"messages": [{"role": "user", "content": "a", "content": "b"}]}',
    ):
        with pytest.raises(DialectError, match="duplicate key"):
            parse_json(raw)


def test_big_integers_survive_a_rewrite() -> None:
    from extproc.dialects import parse_json as _parse_json
    from extproc.dialects.jsonbody import dump_json

    raw = b'{"seed": 123456789012345678901234567890, "t": "caf\xc3\xa9"}'
    assert (
        dump_json(_parse_json(raw)) == b'{"seed":123456789012345678901234567890,"t":"caf\xc3\xa9"}'
    )
