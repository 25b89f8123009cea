"""Buffered response checks and fail-open / fail-closed through a real Envoy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Secrets in requests are only logged here, so the echo upstream can return one."""
    categories = [{"finding_type": "secret", "action": "log"}]
    with running_stack({"enforcement.categories": categories}) as s:
        yield s


AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


def test_secret_in_buffered_response_is_redacted(stack: Stack) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": f"echo: the key is {AWS_KEY}"}],
    }
    resp = stack.post("/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    content = resp.json()["choices"][0]["message"]["content"]
    assert AWS_KEY not in resp.text
    assert content == "the key is [SECRET:AWS_ACCESS_KEY]"
    assert int(resp.headers["content-length"]) == len(resp.content)


def test_secret_in_anthropic_response_is_redacted(stack: Stack) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": f"echo: use {AWS_KEY}"}],
    }
    resp = stack.post("/v1/messages", body)
    assert resp.status_code == 200, resp.text
    assert AWS_KEY not in resp.text
    assert resp.json()["content"][0]["text"] == "use [SECRET:AWS_ACCESS_KEY]"


def test_clean_response_is_untouched(stack: Stack) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "echo: all good here"}]}
    resp = stack.post("/v1/chat/completions", body)
    assert resp.json()["choices"][0]["message"]["content"] == "all good here"
    assert "x-llmtrace-flagged" not in resp.headers


def test_streaming_response_passes_through(stack: Stack) -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "echo: hello stream"}],
    }
    resp = stack.post("/v1/chat/completions", body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "data: [DONE]" in resp.text


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_extproc_down(mode: str) -> None:
    with running_stack({"server.failure_mode": mode}) as s:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
        assert s.post("/v1/chat/completions", body).status_code == 200
        s.kill_extproc()
        resp = s.post("/v1/chat/completions", body)
        if mode == "open":
            assert resp.status_code == 200
            assert resp.json()["choices"][0]["message"]["content"]
        else:
            assert resp.status_code == 500
            assert "fail-closed" in resp.json()["error"]["message"]
            resp = s.post("/v1/messages", {**body, "max_tokens": 5})
            assert resp.status_code == 500
            assert resp.json()["type"] == "error"
