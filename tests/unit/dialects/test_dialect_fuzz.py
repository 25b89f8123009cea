"""On any JSON value, extraction either returns segments with exact paths or raises DialectError."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.dialects import ANTHROPIC, OPENAI, Dialect, DialectError, get_at, set_at

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Keys the dialects look for, so the fuzzer reaches deep branches rather than
# only ever producing "messages: required field is missing".
KEYS = st.sampled_from(
    [
        "messages", "role", "content", "type", "text", "tool_calls", "function", "arguments",
        "function_call", "refusal", "custom", "input", "prompt", "suffix", "instructions",
        "output", "choices", "message", "system", "source", "data", "completion", "name",
    ]
)  # fmt: skip
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
KINDS = st.sampled_from(
    [
        "text", "refusal", "image_url", "message", "function_call", "function_call_output",
        "custom_tool_call", "mcp_call", "input_text", "output_text", "tool_use", "tool_result",
        "document", "image", "content",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | ROLES
    | KINDS
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=40,
)

# Near-valid messages, parts and items, so most examples get past the shape checks
# and exercise the segment paths rather than only the error paths.
TEXTISH = st.text(max_size=8) | st.none() | SCALARS
SOURCE = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "content", "base64"])},
    optional={"data": TEXTISH, "content": st.text(max_size=8) | JSON},
)
PART = st.fixed_dictionaries(
    {"type": KINDS},
    optional={
        "text": TEXTISH,
        "refusal": TEXTISH,
        "input": JSON,
        "content": st.text(max_size=8)
        | st.lists(st.fixed_dictionaries({"type": KINDS, "text": TEXTISH})),
        "source": SOURCE,
    },
)
FUNCTION = st.fixed_dictionaries({}, optional={"arguments": TEXTISH, "input": TEXTISH})
CALL = st.fixed_dictionaries({}, optional={"function": FUNCTION, "custom": FUNCTION})
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES},
    optional={
        "type": KINDS,
        "content": st.text(max_size=8) | st.lists(PART, max_size=3) | SCALARS,
        "tool_calls": st.lists(CALL, max_size=2),
        "function_call": FUNCTION,
        "arguments": TEXTISH,
        "input": TEXTISH,
        "output": st.text(max_size=8) | st.lists(PART, max_size=2),
    },
)
ITEM = MESSAGE | PART | JSON

ENDPOINTS: list[tuple[Dialect, str]] = [
    (OPENAI, "/v1/chat/completions"),
    (OPENAI, "/v1/completions"),
    (OPENAI, "/v1/responses"),
    (ANTHROPIC, "/v1/messages"),
    (ANTHROPIC, "/v1/complete"),
]


def _check(dialect: Dialect, path: str, body: Any, *, response: bool) -> None:
    try:
        if response:
            segments = dialect.extract_response(path, body)
        else:
            segments = dialect.extract_request(path, body)
    except DialectError:
        return
    for segment in segments:
        assert get_at(body, segment.path) == segment.text
        assert segment.text  # empty strings are never segments
    # Write-back through every path must succeed and change exactly that string.
    for segment in segments:
        set_at(body, segment.path, segment.text + "!")
        assert get_at(body, segment.path) == segment.text + "!"
        set_at(body, segment.path, segment.text)


@pytest.mark.parametrize(("dialect", "path"), ENDPOINTS)
@settings(max_examples=150, deadline=None)
@given(body=JSON)
def test_request_raises_only_dialect_error(dialect: Dialect, path: str, body: Any) -> None:
    _check(dialect, path, body, response=False)


@pytest.mark.parametrize(("dialect", "path"), ENDPOINTS)
@settings(max_examples=150, deadline=None)
@given(body=JSON)
def test_response_raises_only_dialect_error(dialect: Dialect, path: str, body: Any) -> None:
    _check(dialect, path, body, response=True)


@pytest.mark.parametrize(("dialect", "path"), ENDPOINTS)
@settings(max_examples=150, deadline=None)
@given(items=st.lists(ITEM, max_size=4), parts=st.lists(PART, max_size=3), prompt=TEXTISH)
def test_near_valid_bodies(
    dialect: Dialect, path: str, items: list[Any], parts: list[Any], prompt: Any
) -> None:
    # Well-formed top level with fuzzed insides, to exercise the per-message code.
    choices = [{"message": m, "text": prompt} for m in items if isinstance(m, dict)]
    body = {
        "messages": items,
        "input": items,
        "output": items,
        "system": parts,
        "instructions": prompt,
        "prompt": prompt,
        "choices": choices,
        "content": parts,
        "completion": prompt,
    }
    _check(dialect, path, body, response=False)
    _check(dialect, path, body, response=True)


def test_deeply_nested_tool_input_does_not_recurse() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = {"k": deep}
    body = {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": deep}]}]}
    (segment,) = ANTHROPIC.extract_request("/v1/messages", body)
    assert segment.text == "leaf"
    assert len(segment.path) == 5000 + 5
