"""On any event, decoders never raise, and a rewrite of a text event reads back as the new text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.dialects.sse import SseEvent, SseParser
from extproc.dialects.stream import (
    NONE,
    AnthropicCompleteStream,
    AnthropicMessagesStream,
    OpenAIChatStream,
    OpenAICompletionsStream,
    OpenAIResponsesStream,
    StreamDecoder,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DECODERS: list[StreamDecoder] = [
    OpenAIChatStream(),
    OpenAICompletionsStream(),
    OpenAIResponsesStream(),
    AnthropicMessagesStream(),
    AnthropicCompleteStream(),
]

# Keys and type names the decoders look for, so the fuzzer reaches the text branches.
KEYS = st.sampled_from(
    [
        "choices", "delta", "content", "refusal", "tool_calls", "function", "arguments",
        "function_call", "text", "usage", "prompt_tokens", "completion_tokens", "type",
        "response", "input_tokens", "output_tokens", "message", "partial_json",
        "completion", "stop_reason", "cache_read_input_tokens",
    ]
)  # fmt: skip
NAMES = st.sampled_from(
    [
        "response.output_text.delta", "response.function_call_arguments.delta",
        "response.completed", "response.failed", "error", "content_block_delta",
        "text_delta", "input_json_delta", "message_start", "message_delta", "message_stop",
        "completion", "ping",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS | NAMES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)


def one_of(*names: str) -> st.SearchStrategy[str]:
    return st.sampled_from(names) | NAMES


LEAF = st.text(max_size=6) | st.text(max_size=6) | JSON
COUNT = st.integers(-1, 2**70) | SCALARS
USAGE = st.fixed_dictionaries(
    {},
    optional={k: COUNT for k in ("prompt_tokens", "completion_tokens", "input_tokens",
                                 "output_tokens", "cache_read_input_tokens")},
) | JSON  # fmt: skip

# Near-valid events of each dialect with fuzzed leaves, so the text and usage branches run.
NEAR_VALID = st.one_of(
    st.fixed_dictionaries(
        {"choices": st.lists(st.fixed_dictionaries({"delta": st.fixed_dictionaries(
            {}, optional={"content": LEAF, "refusal": LEAF, "tool_calls": st.lists(
                st.fixed_dictionaries({"function": st.fixed_dictionaries(
                    {}, optional={"arguments": LEAF})}), max_size=2)})}), max_size=3)},
        optional={"usage": USAGE},
    ),
    st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries({"text": LEAF}), max_size=3)}),
    st.fixed_dictionaries({"type": one_of("response.output_text.delta",
        "response.function_call_arguments.delta", "response.refusal.delta"), "delta": LEAF}),
    st.fixed_dictionaries({"type": one_of("response.completed", "response.failed"),
        "response": st.fixed_dictionaries({"usage": USAGE})}),
    st.fixed_dictionaries({"type": one_of("content_block_delta"), "delta": st.fixed_dictionaries(
        {"type": one_of("text_delta", "input_json_delta", "thinking_delta")},
        optional={"text": LEAF, "partial_json": LEAF})}),
    st.fixed_dictionaries({"type": one_of("completion", "error"), "completion": LEAF,
        "stop_reason": LEAF}),
    st.fixed_dictionaries({"type": one_of("message_start", "message_delta"), "usage": USAGE,
        "message": st.fixed_dictionaries({"usage": USAGE})}),
)  # fmt: skip


def event_of(data: str | None, name: str | None) -> SseEvent:
    head = f"event: {name}\n" if name is not None else ""
    body = "" if data is None else "".join(f"data: {line}\n" for line in data.split("\n"))
    raw = (head + body + "\n").encode()
    (event,) = SseParser().feed(raw)
    return event


@settings(max_examples=500, deadline=None)
@given(value=JSON | NEAR_VALID, name=st.none() | NAMES, new_text=st.text(max_size=8))
def test_json_events(value: Any, name: str | None, new_text: str) -> None:
    # json, not orjson: integers beyond 64 bits must reach the decoders too.
    event = event_of(json.dumps(value, ensure_ascii=False), name)
    for decoder in DECODERS:
        delta = decoder.decode(event)
        assert delta.parsed == isinstance(value, dict)
        out = decoder.rewrite_text(event, new_text)
        if delta.kind == NONE:
            continue
        (rewritten,) = SseParser().feed(out)
        again = decoder.decode(rewritten)
        assert again.text == new_text
        # The kind holds, except in an event mixing content and tool arguments, whose first
        # text fragment takes all the new text (see rewrite_text).
        assert again.kind != NONE or new_text == ""


@settings(max_examples=300, deadline=None)
@given(data=st.none() | st.text(max_size=30), name=st.none() | st.text(max_size=8))
def test_arbitrary_text_events(data: str | None, name: str | None) -> None:
    if name is not None and ("\n" in name or "\r" in name):
        name = None
    if data is not None:
        data = data.replace("\r", "")
    event = event_of(data, name)
    for decoder in DECODERS:
        decoder.decode(event)
        decoder.rewrite_text(event, "x")
        decoder.warning_events(data or "", name or "")
