"""Anthropic-shaped payloads: a Messages API `message`, streamed or not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from extproc.demo.reply import Reply, Turn, new_id, pieces, sse


def messages(turn: Turn) -> Reply:
    """A `message`, or the Messages API event stream from `message_start` to `message_stop`."""
    ident = new_id("msg_")
    if turn.stream:
        return Reply(events=_stream(turn, ident))
    body = _message(turn, ident, [{"type": "text", "text": turn.text}], "end_turn")
    body["usage"] = {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens}
    return Reply(body=body)


def _message(turn: Turn, ident: str, content: list[Any], stop: str | None) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": turn.input_tokens, "output_tokens": 1},
    }


def _stream(turn: Turn, ident: str) -> Iterator[bytes]:
    def event(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, event=kind)

    yield event("message_start", message=_message(turn, ident, [], None))
    yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield event("ping")
    for piece in pieces(turn.text):
        yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
    yield event("content_block_stop", index=0)
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    yield event("message_delta", delta=stop, usage={"output_tokens": turn.output_tokens})
    yield event("message_stop")
