"""Per-dialect decoders for streamed LLM responses: model text, usage, end of stream.

A decoder reads one `SseEvent` at a time and says what the model wrote in it, so the
output checks can scan a stream as it passes. It also writes the two things the processor
sends back into a stream: an event with its text replaced (redaction) and the final
warning event(s) that end a stream early, each in the client's own dialect.

Decoders are stateless (one instance serves every stream) and never raise: data that is
not JSON, or JSON of an unexpected shape, decodes to an event with no text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from extproc.dialects.endpoints import Endpoint, endpoint_for_path
from extproc.dialects.sse import SseEvent

CONTENT = "content"
TOOL_ARGS = "tool_args"
NONE = "none"

# The id of the chunk, or the response, that we write ourselves when we end a stream.
STOP_ID = "extproc-stop"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts an event reported; None where the event did not say."""

    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one event means to the analysers."""

    text: str  # model-produced text in this event ("" if none)
    kind: str  # CONTENT, TOOL_ARGS or NONE
    usage: Usage | None  # set when the event carries usage
    done: bool  # a terminal event ([DONE], message_stop, response.completed, an error)
    parsed: bool  # False when the data could not be parsed or understood


class StreamDecoder(Protocol):
    """One streaming wire format."""

    def decode(self, event: SseEvent) -> StreamDelta:
        """What the event carries; never raises."""
        ...

    def warning_events(self, message: str, code: str) -> bytes:
        """Complete SSE bytes that tell the client why its stream ends here."""
        ...

    def rewrite_text(self, event: SseEvent, new_text: str) -> bytes:
        """The event with its text replaced by `new_text`, every other field kept."""
        ...


_NOTHING = StreamDelta("", NONE, None, done=False, parsed=True)
_UNPARSED = StreamDelta("", NONE, None, done=False, parsed=False)
_DONE = StreamDelta("", NONE, None, done=True, parsed=True)

# Where a text fragment sits in the event's JSON: the object holding it, its key, its kind.
_Slot = tuple[dict[str, Any], str, str]


def _load(data: str) -> dict[str, Any] | None:
    """The event data as a JSON object, or None when it is not one."""
    try:
        value = orjson.loads(data)
    except ValueError:  # orjson.JSONDecodeError, also raised for over-deep nesting
        return None
    return value if isinstance(value, dict) else None


def _event_type(obj: dict[str, Any], event: SseEvent) -> str:
    kind = obj.get("type")
    if isinstance(kind, str):
        return kind
    return event.event or ""


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _count(value: Any) -> int | None:
    # bool is an int subclass, and a boolean is no token count.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(raw: Any, prompt_key: str, completion_key: str) -> Usage | None:
    usage = _dict(raw)
    if usage is None:
        return None
    prompt, completion = _count(usage.get(prompt_key)), _count(usage.get(completion_key))
    if prompt is None and completion is None:
        return None
    return Usage(prompt, completion)


def _sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _dumps_lenient(obj: dict[str, Any], slot: _Slot) -> bytes:
    """JSON for the rewritten data; lone surrogates in the new text become "?"."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        holder, key, _ = slot
        holder[key] = holder[key].encode("utf-8", "replace").decode("utf-8")
        return orjson.dumps(obj)


def _replace_data(event: SseEvent, data: bytes) -> bytes:
    """The event re-framed with `data` as its only data line; other lines kept in order."""
    raw = event.raw
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out: list[bytes] = []
    placed = False
    # Empty lines are the terminating blank line and a possible lead LF (see SseEvent.raw);
    # a byte order mark only precedes the first event, which never carries text.
    for line in raw.split(b"\n"):
        if not line:
            continue
        if line == b"data" or line.startswith(b"data:"):
            if not placed:
                out.append(b"data: " + data)
                placed = True
            continue
        out.append(line)
    return b"\n".join(out) + b"\n\n"


class _JsonStream:
    """What the JSON-per-event dialects share; subclasses say where text and usage sit."""

    # Each hook gets the parsed data and the event's type: the JSON `type` (what the SDKs
    # build their event objects from), else the SSE `event:` name, else "".

    def _slots(self, obj: dict[str, Any], kind: str) -> list[_Slot]:
        """The text fragments in the event, in reading order."""
        raise NotImplementedError

    def _usage(self, obj: dict[str, Any], kind: str) -> Usage | None:
        raise NotImplementedError

    def _done(self, obj: dict[str, Any], kind: str) -> bool:
        raise NotImplementedError

    def _sentinel_done(self, data: str) -> bool:
        """A non-JSON data line that ends the stream (OpenAI's `[DONE]`)."""
        return False

    def decode(self, event: SseEvent) -> StreamDelta:
        """What the event carries; never raises."""
        data = event.data
        if data is None:
            return _NOTHING  # a comment, a bare `event:` block, or a blank line
        if self._sentinel_done(data):
            return _DONE
        obj = _load(data)
        if obj is None:
            return _UNPARSED
        try:
            return self._delta(obj, _event_type(obj, event))
        except Exception:
            # The hooks check every type they touch; should a shape still slip through,
            # the event passes untouched (counted by the caller) rather than break the stream.
            return _UNPARSED

    def _delta(self, obj: dict[str, Any], name: str) -> StreamDelta:
        texts: list[str] = []
        kind = NONE
        for holder, key, slot_kind in self._slots(obj, name):
            text = holder[key]
            if text:
                texts.append(text)
                # Content wins over tool arguments when an event carries both.
                if kind != CONTENT:
                    kind = slot_kind
        usage = self._usage(obj, name)
        done = self._done(obj, name)
        if not texts and usage is None and not done:
            return _NOTHING
        return StreamDelta("".join(texts), kind, usage, done=done, parsed=True)

    def rewrite_text(self, event: SseEvent, new_text: str) -> bytes:
        """The event with its text replaced; the raw event when it carries no text.

        Returns b"" (the event dropped) in the one case it cannot be re-serialised, JSON
        nested deeper than orjson writes, so that redaction never lets the text through.
        """
        if event.data is None:
            return event.raw
        obj = _load(event.data)
        if obj is None:
            return event.raw
        try:
            slots = self._slots(obj, _event_type(obj, event))
        except Exception:  # as in decode: never raise on the hot path
            return event.raw
        if not slots:
            return event.raw
        # When several fragments carry text, the first non-empty one takes all of the new
        # text and the others are emptied: decode joins them, so it still reads new_text.
        first = next((i for i, (h, k, _) in enumerate(slots) if h[k]), 0)
        for i, (holder, key, _) in enumerate(slots):
            holder[key] = new_text if i == first else ""
        try:
            data = _dumps_lenient(obj, slots[first])
        except orjson.JSONEncodeError:
            # Nesting deeper than orjson writes: drop the event rather than let the
            # unredacted text through.
            return b""
        return _replace_data(event, data)


class OpenAIChatStream(_JsonStream):
    """`chat.completion.chunk` events from `/v1/chat/completions`, ending in `data: [DONE]`.

    Text from every choice is joined in choice order (n > 1 streams interleave choices),
    so the checks see all the model wrote; `delta.content` and `delta.refusal` are content,
    `delta.tool_calls[].function.arguments` and the legacy `delta.function_call.arguments`
    are tool arguments.
    """

    def _sentinel_done(self, data: str) -> bool:
        # The SDKs test the prefix, so so do we.
        return data.startswith("[DONE]")

    def _slots(self, obj: dict[str, Any], kind: str) -> list[_Slot]:
        slots: list[_Slot] = []
        for raw in _list(obj.get("choices")):
            delta = _dict(raw.get("delta")) if isinstance(raw, dict) else None
            if delta is None:
                continue
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str):
                    slots.append((delta, key, CONTENT))
            for call in _list(delta.get("tool_calls")):
                function = _dict(call.get("function")) if isinstance(call, dict) else None
                if function is not None and isinstance(function.get("arguments"), str):
                    slots.append((function, "arguments", TOOL_ARGS))
            legacy = _dict(delta.get("function_call"))
            if legacy is not None and isinstance(legacy.get("arguments"), str):
                slots.append((legacy, "arguments", TOOL_ARGS))
        return slots

    def _usage(self, obj: dict[str, Any], kind: str) -> Usage | None:
        return _usage(obj.get("usage"), "prompt_tokens", "completion_tokens")

    def _done(self, obj: dict[str, Any], kind: str) -> bool:
        return False

    def warning_events(self, message: str, code: str) -> bytes:
        """A `content_filter` chunk with an `error` object, then `data: [DONE]`.

        The openai SDKs raise APIError(message) on a chunk with an `error` key: that is
        intended, the client learns why its stream stopped. Clients that ignore unknown keys
        see finish_reason `content_filter`, as when the provider's own filter stops a stream.
        """
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "content_filter"}
        chunk = {
            "id": STOP_ID,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "",
            "choices": [choice],
            "error": {"message": message, "type": "content_filter", "param": None, "code": code},
        }
        return _sse(chunk) + b"data: [DONE]\n\n"


class OpenAICompletionsStream(OpenAIChatStream):
    """`text_completion` events from the legacy `/v1/completions`: `choices[].text`."""

    def _slots(self, obj: dict[str, Any], kind: str) -> list[_Slot]:
        return [
            (choice, "text", CONTENT)
            for choice in _list(obj.get("choices"))
            if isinstance(choice, dict) and isinstance(choice.get("text"), str)
        ]

    def warning_events(self, message: str, code: str) -> bytes:
        """A `content_filter` completion chunk with an `error` object, then `data: [DONE]`."""
        choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": "content_filter"}
        chunk = {
            "id": STOP_ID,
            "object": "text_completion",
            "created": int(time.time()),
            "model": "",
            "choices": [choice],
            "error": {"message": message, "type": "content_filter", "param": None, "code": code},
        }
        return _sse(chunk) + b"data: [DONE]\n\n"


# Responses API delta events whose `delta` string is model output, and what kind.
_RESPONSES_DELTAS: dict[str, str] = {
    "response.output_text.delta": CONTENT,
    "response.refusal.delta": CONTENT,
    "response.function_call_arguments.delta": TOOL_ARGS,
    "response.custom_tool_call_input.delta": TOOL_ARGS,
    "response.mcp_call_arguments.delta": TOOL_ARGS,
}
# Events after which the Responses API sends nothing more.
_RESPONSES_TERMINAL = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)


class OpenAIResponsesStream(_JsonStream):
    """Typed events from `/v1/responses`; the JSON `type` names the event.

    Reasoning deltas are not scanned: providers send them summarised or encrypted, and
    they do not reach the user as the answer does.
    """

    def _sentinel_done(self, data: str) -> bool:
        # Not part of the Responses API, but some compatible servers end with it too.
        return data.startswith("[DONE]")

    def _slots(self, obj: dict[str, Any], kind: str) -> list[_Slot]:
        slot_kind = _RESPONSES_DELTAS.get(kind)
        if slot_kind is None or not isinstance(obj.get("delta"), str):
            return []
        return [(obj, "delta", slot_kind)]

    def _usage(self, obj: dict[str, Any], kind: str) -> Usage | None:
        if kind not in _RESPONSES_TERMINAL:
            return None
        response = _dict(obj.get("response"))
        if response is None:
            return None
        return _usage(response.get("usage"), "input_tokens", "output_tokens")

    def _done(self, obj: dict[str, Any], kind: str) -> bool:
        return kind in _RESPONSES_TERMINAL

    def warning_events(self, message: str, code: str) -> bytes:
        """An `error` event, then `response.failed` with the same error.

        `error` is how the Responses API reports a failure mid-stream; `response.failed` is
        the terminal lifecycle event that clients tracking a response wait for. The openai
        SDK yields both as typed events (neither has a top-level `error` key, so it does not
        raise); `get_final_response()` then fails for want of `response.completed`.
        """
        error = {"type": "error", "code": code, "message": message, "param": None}
        response = {
            "id": STOP_ID,
            "object": "response",
            "created_at": int(time.time()),
            "status": "failed",
            "error": {"code": code, "message": message},
            "incomplete_details": None,
            "output": [],
            "usage": None,
        }
        failed = {"type": "response.failed", "response": response}
        return _sse(error, "error") + _sse(failed, "response.failed")


class AnthropicMessagesStream(_JsonStream):
    """Messages API events from `/v1/messages`, `message_start` to `message_stop`.

    Prompt tokens are `input_tokens` plus the cache read and write counts, which Anthropic
    reports apart, so the figure compares with OpenAI's `prompt_tokens` (cached included).
    """

    def _slots(self, obj: dict[str, Any], kind: str) -> list[_Slot]:
        if kind != "content_block_delta":
            return []
        delta = _dict(obj.get("delta"))
        if delta is None:
            return []
        delta_type = delta.get("type")
        if delta_type == "text_delta" and isinstance(delta.get("text"), str):
            return [(delta, "text", CONTENT)]
        if delta_type == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            return [(delta, "partial_json", TOOL_ARGS)]
        return []  # thinking, signature and citation deltas are not the answer

    def _usage(self, obj: dict[str, Any], kind: str) -> Usage | None:
        if kind == "message_start":
            message = _dict(obj.get("message"))
            usage = _dict(message.get("usage")) if message is not None else None
            # message_start's output_tokens is a placeholder; message_delta has the count.
            return _anthropic_usage(usage, with_output=False)
        if kind == "message_delta":
            return _anthropic_usage(_dict(obj.get("usage")), with_output=True)
        return None

    def _done(self, obj: dict[str, Any], kind: str) -> bool:
        return kind in ("message_stop", "error")

    def warning_events(self, message: str, code: str) -> bytes:
        """An `error` event of type `invalid_request_error`, as Anthropic ends a stream.

        Anthropic has no content-filter error type and no error code field: it reports its
        own output filtering as `invalid_request_error`, so we do too, and `code` is left out
        (as the Anthropic dialect's error bodies leave it out). The SDKs raise an APIError
        carrying the message.
        """
        del code
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        return _sse(error, "error")


def _anthropic_usage(usage: dict[str, Any] | None, *, with_output: bool) -> Usage | None:
    if usage is None:
        return None
    counts = [
        _count(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    known = [n for n in counts if n is not None]
    prompt = sum(known) if known else None
    completion = _count(usage.get("output_tokens")) if with_output else None
    if prompt is None and completion is None:
        return None
    return Usage(prompt, completion)


class AnthropicCompleteStream(AnthropicMessagesStream):
    """Legacy `/v1/complete` events: `completion` text; the event with a stop_reason ends it."""

    def _slots(self, obj: dict[str, Any], kind: str) -> list[_Slot]:
        if kind == "completion" and isinstance(obj.get("completion"), str):
            return [(obj, "completion", CONTENT)]
        return []

    def _usage(self, obj: dict[str, Any], kind: str) -> Usage | None:
        return None  # the legacy API reports no usage in its stream

    def _done(self, obj: dict[str, Any], kind: str) -> bool:
        return kind == "error" or (kind == "completion" and obj.get("stop_reason") is not None)


# Decoders hold no state, so one instance each serves every stream.
_BY_ENDPOINT: dict[Endpoint, StreamDecoder] = {
    Endpoint.CHAT_COMPLETIONS: OpenAIChatStream(),
    Endpoint.COMPLETIONS: OpenAICompletionsStream(),
    Endpoint.RESPONSES: OpenAIResponsesStream(),
    Endpoint.MESSAGES: AnthropicMessagesStream(),
    Endpoint.COMPLETE: AnthropicCompleteStream(),
}


def decoder_for_path(path: str) -> StreamDecoder | None:
    """The stream decoder for a request path, or None for endpoints we do not decode."""
    endpoint = endpoint_for_path(path)
    return None if endpoint is None else _BY_ENDPOINT.get(endpoint)


__all__ = [
    "CONTENT",
    "NONE",
    "STOP_ID",
    "TOOL_ARGS",
    "AnthropicCompleteStream",
    "AnthropicMessagesStream",
    "OpenAIChatStream",
    "OpenAICompletionsStream",
    "OpenAIResponsesStream",
    "StreamDecoder",
    "StreamDelta",
    "Usage",
    "decoder_for_path",
]
