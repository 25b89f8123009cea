"""Per-dialect stream decoders: text, usage and end of stream; warnings and rewrites."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.dialects.sse import SseEvent, SseParser
from extproc.dialects.stream import (
    CONTENT,
    NONE,
    TOOL_ARGS,
    AnthropicCompleteStream,
    AnthropicMessagesStream,
    OpenAIChatStream,
    OpenAICompletionsStream,
    OpenAIResponsesStream,
    StreamDecoder,
    StreamDelta,
    Usage,
    decoder_for_path,
)


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return head + b"data: " + body + b"\n\n"


def one(raw: bytes) -> SseEvent:
    events = SseParser().feed(raw)
    assert len(events) == 1
    return events[0]


def decode(decoder: StreamDecoder, raw: bytes) -> list[StreamDelta]:
    return [decoder.decode(e) for e in SseParser().feed(raw)]


def chat(delta: dict[str, Any], **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    return sse({"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra})


CHAT = OpenAIChatStream()
COMPLETIONS = OpenAICompletionsStream()
RESPONSES = OpenAIResponsesStream()
MESSAGES = AnthropicMessagesStream()
COMPLETE = AnthropicCompleteStream()


class TestDecoderForPath:
    @pytest.mark.parametrize(
        ("path", "kind"),
        [
            ("/v1/chat/completions", OpenAIChatStream),
            ("/openai/deployments/x/chat/completions?api-version=1", OpenAIChatStream),
            ("/v1/completions", OpenAICompletionsStream),
            ("/v1/responses", OpenAIResponsesStream),
            ("/v1/messages", AnthropicMessagesStream),
            ("/v1/complete", AnthropicCompleteStream),
        ],
    )
    def test_known_paths(self, path: str, kind: type) -> None:
        assert isinstance(decoder_for_path(path), kind)

    @pytest.mark.parametrize("path", ["/v1/embeddings", "/", "/v1/models"])
    def test_unknown_paths(self, path: str) -> None:
        assert decoder_for_path(path) is None


class TestOpenAIChat:
    def test_content_delta(self) -> None:
        (delta,) = decode(CHAT, chat({"content": "Hello"}))
        assert delta == StreamDelta("Hello", CONTENT, None, done=False, parsed=True)

    def test_role_only_first_chunk_has_no_text(self) -> None:
        (delta,) = decode(CHAT, chat({"role": "assistant", "content": ""}))
        assert (delta.text, delta.kind, delta.parsed) == ("", NONE, True)

    def test_tool_call_arguments(self) -> None:
        call = {"index": 0, "id": "t", "function": {"name": "f", "arguments": '{"a":'}}
        (delta,) = decode(CHAT, chat({"tool_calls": [call]}))
        assert (delta.text, delta.kind) == ('{"a":', TOOL_ARGS)

    def test_legacy_function_call_arguments(self) -> None:
        (delta,) = decode(CHAT, chat({"function_call": {"arguments": "{}"}}))
        assert (delta.text, delta.kind) == ("{}", TOOL_ARGS)

    def test_all_choices_are_joined_in_order(self) -> None:
        choices = [
            {"index": 0, "delta": {"content": "A"}},
            {"index": 1, "delta": {"tool_calls": [{"function": {"arguments": "B"}}]}},
            {"index": 2, "delta": {"content": "C"}},
        ]
        (delta,) = decode(CHAT, sse({"choices": choices}))
        assert (delta.text, delta.kind) == ("ABC", CONTENT)

    def test_usage_chunk(self) -> None:
        raw = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
        (delta,) = decode(CHAT, raw)
        assert delta.usage == Usage(9, 3)
        assert not delta.done

    def test_null_usage_is_no_usage(self) -> None:
        (delta,) = decode(CHAT, chat({"content": "x"}, usage=None))
        assert delta.usage is None

    def test_done(self) -> None:
        (delta,) = decode(CHAT, b"data: [DONE]\n\n")
        assert delta.done and delta.parsed

    def test_unparseable_and_non_object_data(self) -> None:
        for raw in (b"data: {nope\n\n", b"data: [1,2]\n\n", b'data: "s"\n\n'):
            (delta,) = decode(CHAT, raw)
            assert (delta.kind, delta.parsed, delta.done) == (NONE, False, False)

    def test_comment_is_parsed_and_empty(self) -> None:
        (delta,) = decode(CHAT, b": OPENROUTER PROCESSING\n\n")
        assert (delta.text, delta.kind, delta.parsed) == ("", NONE, True)

    def test_wrong_shapes_carry_no_text(self) -> None:
        for data in (
            {"choices": "x"},
            {"choices": [1, None, {"delta": "x"}, {"delta": {"content": 5}}]},
            {"choices": [{"delta": {"tool_calls": [1, {"function": None}]}}]},
            {"usage": {"prompt_tokens": True}},
        ):
            (delta,) = decode(CHAT, sse(data))
            assert (delta.text, delta.kind, delta.usage, delta.parsed) == ("", NONE, None, True)


class TestOpenAICompletions:
    def test_text_usage_and_done(self) -> None:
        raw = (
            sse({"choices": [{"text": "Hi", "index": 0}]})
            + sse({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
            + b"data: [DONE]\n\n"
        )
        text, usage, done = decode(COMPLETIONS, raw)
        assert (text.text, text.kind) == ("Hi", CONTENT)
        assert usage.usage == Usage(2, 1)
        assert done.done


class TestOpenAIResponses:
    def test_text_and_tool_deltas(self) -> None:
        raw = sse(
            {"type": "response.output_text.delta", "delta": "Hi", "item_id": "m"},
            "response.output_text.delta",
        ) + sse(
            {"type": "response.function_call_arguments.delta", "delta": '{"q":'},
            "response.function_call_arguments.delta",
        )
        text, args = decode(RESPONSES, raw)
        assert (text.text, text.kind) == ("Hi", CONTENT)
        assert (args.text, args.kind) == ('{"q":', TOOL_ARGS)

    def test_other_events_carry_nothing(self) -> None:
        raw = sse({"type": "response.output_text.done", "text": "Hi"}, "response.output_text.done")
        (delta,) = decode(RESPONSES, raw)
        assert (delta.text, delta.kind, delta.done) == ("", NONE, False)

    def test_completed_is_done_with_usage(self) -> None:
        usage = {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
        raw = sse(
            {"type": "response.completed", "response": {"status": "completed", "usage": usage}},
            "response.completed",
        )
        (delta,) = decode(RESPONSES, raw)
        assert delta.done and delta.usage == Usage(11, 4)

    def test_type_falls_back_to_the_event_name(self) -> None:
        (delta,) = decode(RESPONSES, sse({"delta": "x"}, "response.output_text.delta"))
        assert (delta.text, delta.kind) == ("x", CONTENT)


class TestAnthropicMessages:
    def test_a_whole_stream(self) -> None:
        start_usage = {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
        raw = (
            sse({"type": "message_start", "message": {"usage": start_usage}}, "message_start")
            + sse({"type": "ping"}, "ping")
            + sse(
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}},
                "content_block_delta",
            )
            + sse(
                {
                    "type": "content_block_delta",
                    "delta": {"type": "input_json_delta", "partial_json": '{"x"'},
                },
                "content_block_delta",
            )
            + sse(
                {
                    "type": "content_block_delta",
                    "delta": {"type": "thinking_delta", "thinking": "h"},
                },
                "content_block_delta",
            )
            + sse({"type": "message_delta", "usage": {"output_tokens": 7}}, "message_delta")
            + sse({"type": "message_stop"}, "message_stop")
        )
        start, ping, text, args, thinking, end, stop = decode(MESSAGES, raw)
        assert start.usage == Usage(15, None)
        assert (ping.kind, ping.parsed) == (NONE, True)
        assert (text.text, text.kind) == ("Hi", CONTENT)
        assert (args.text, args.kind) == ('{"x"', TOOL_ARGS)
        assert (thinking.text, thinking.kind) == ("", NONE)
        assert end.usage == Usage(None, 7)
        assert stop.done and not end.done

    def test_upstream_error_is_terminal(self) -> None:
        raw = sse({"type": "error", "error": {"type": "overloaded_error"}}, "error")
        (delta,) = decode(MESSAGES, raw)
        assert delta.done


class TestAnthropicComplete:
    def test_completion_text_and_stop(self) -> None:
        raw = sse({"type": "completion", "completion": " Hi", "stop_reason": None}, "completion")
        raw += sse({"type": "completion", "completion": "", "stop_reason": "stop_sequence"})
        text, stop = decode(COMPLETE, raw)
        assert (text.text, text.kind, text.done) == (" Hi", CONTENT, False)
        assert stop.done


ALL: list[StreamDecoder] = [CHAT, COMPLETIONS, RESPONSES, MESSAGES, COMPLETE]


class TestWarningEvents:
    @pytest.mark.parametrize("decoder", ALL, ids=lambda d: type(d).__name__)
    def test_parse_back_valid_and_terminal(self, decoder: StreamDecoder) -> None:
        raw = decoder.warning_events('blocked: "secret" 🙂', "output_blocked")
        parser = SseParser()
        events = parser.feed(raw)
        assert parser.flush() == b""
        assert events, "at least one event"
        for event in events:
            assert event.data is not None
            if event.data != "[DONE]":
                orjson.loads(event.data)
        deltas = [decoder.decode(e) for e in events]
        assert all(d.parsed for d in deltas)
        assert deltas[-1].done
        assert all(d.text == "" for d in deltas)
        assert any('blocked: \\"secret\\" 🙂' in (e.data or "") for e in events)

    def test_openai_chat_shape(self) -> None:
        chunk, done = SseParser().feed(CHAT.warning_events("m", "c"))
        data = orjson.loads(chunk.data or "")
        assert data["object"] == "chat.completion.chunk"
        assert data["choices"][0]["finish_reason"] == "content_filter"
        assert data["error"] == {
            "message": "m",
            "type": "content_filter",
            "param": None,
            "code": "c",
        }
        assert isinstance(data["created"], int)
        assert done.data == "[DONE]"

    def test_openai_responses_shape(self) -> None:
        error, failed = SseParser().feed(RESPONSES.warning_events("m", "c"))
        assert error.event == "error"
        assert orjson.loads(error.data or "") == {
            "type": "error",
            "code": "c",
            "message": "m",
            "param": None,
        }
        assert failed.event == "response.failed"
        response = orjson.loads(failed.data or "")["response"]
        assert response["status"] == "failed"
        assert response["error"] == {"code": "c", "message": "m"}

    def test_anthropic_shape(self) -> None:
        (error,) = SseParser().feed(MESSAGES.warning_events("m", "c"))
        assert error.event == "error"
        assert orjson.loads(error.data or "") == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "m"},
        }


REWRITABLE: list[tuple[StreamDecoder, bytes]] = [
    (CHAT, chat({"content": "my secret"}, usage=None)),
    (CHAT, chat({"tool_calls": [{"index": 0, "function": {"arguments": "my secret"}}]})),
    (COMPLETIONS, sse({"choices": [{"text": "my secret", "index": 0}]})),
    (
        RESPONSES,
        sse(
            {"type": "response.output_text.delta", "delta": "my secret", "sequence_number": 4},
            "response.output_text.delta",
        ),
    ),
    (
        MESSAGES,
        sse(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "my secret"},
            },
            "content_block_delta",
        ),
    ),
    (COMPLETE, sse({"type": "completion", "completion": "my secret"}, "completion")),
]


class TestRewriteText:
    @pytest.mark.parametrize(("decoder", "raw"), REWRITABLE)
    def test_round_trip(self, decoder: StreamDecoder, raw: bytes) -> None:
        event = one(raw)
        before = decoder.decode(event)
        out = decoder.rewrite_text(event, "my [REDACTED] ✓")
        rewritten = one(out)
        after = decoder.decode(rewritten)
        assert after.text == "my [REDACTED] ✓"
        assert (after.kind, after.usage, after.done) == (before.kind, before.usage, before.done)
        assert rewritten.event == event.event
        # Every other JSON field is unchanged.
        old, new = orjson.loads(event.data or ""), orjson.loads(rewritten.data or "")
        assert orjson.dumps(old).replace(b"my secret", b"my [REDACTED] \xe2\x9c\x93") == (
            orjson.dumps(new)
        )

    def test_other_lines_are_kept_and_crlf_normalised(self) -> None:
        raw = (
            b"id: 5\r\nevent: completion\r\n: note\r\ndata: "
            + orjson.dumps({"type": "completion", "completion": "x"})
            + b"\r\n\r\n"
        )
        out = COMPLETE.rewrite_text(one(raw), "y")
        assert (
            out
            == b'id: 5\nevent: completion\n: note\ndata: {"type":"completion","completion":"y"}\n\n'
        )

    def test_multiline_data_becomes_one_line(self) -> None:
        raw = b'data: {"choices":[{"delta":\ndata: {"content":"x"}}]}\n\n'
        out = CHAT.rewrite_text(one(raw), "y")
        assert out == b'data: {"choices":[{"delta":{"content":"y"}}]}\n\n'

    def test_several_fragments_first_takes_all(self) -> None:
        choices = [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]
        event = one(sse({"choices": choices}))
        rewritten = one(CHAT.rewrite_text(event, "Z"))
        assert CHAT.decode(rewritten).text == "Z"

    def test_lead_lf_is_dropped(self) -> None:
        parser = SseParser()
        assert len(parser.feed(b": c\r\r")) == 1
        (event,) = parser.feed(b'\ndata: {"choices":[{"delta":{"content":"x"}}]}\n\n')
        assert event.raw.startswith(b"\n")
        assert CHAT.rewrite_text(event, "y") == b'data: {"choices":[{"delta":{"content":"y"}}]}\n\n'

    def test_events_without_text_come_back_unchanged(self) -> None:
        for raw in (b": c\n\n", b"data: [DONE]\n\n", b"data: {bad\n\n", sse({"type": "ping"})):
            event = one(raw)
            assert CHAT.rewrite_text(event, "x") == raw
            assert MESSAGES.rewrite_text(event, "x") == raw

    def test_lone_surrogate_in_new_text_does_not_raise(self) -> None:
        event = one(chat({"content": "x"}))
        out = CHAT.rewrite_text(event, "a\ud800b")
        assert CHAT.decode(one(out)).text == "a?b"

    def test_json_too_deep_to_write_is_dropped(self) -> None:
        deep = b"[" * 300 + b"]" * 300
        raw = b'data: {"choices":[{"delta":{"content":"x"}}],"deep":' + deep + b"}\n\n"
        event = one(raw)
        assert CHAT.decode(event).text == "x"
        assert CHAT.rewrite_text(event, "y") == b""
