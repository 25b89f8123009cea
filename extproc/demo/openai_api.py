"""OpenAI-shaped payloads: chat completions, completions and Responses API, streamed or not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from extproc.demo.reply import Reply, Turn, new_id, now, pieces, sse

DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_extproc_demo"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "claude-sonnet-4-20250514")


def _usage(turn: Turn) -> dict[str, int]:
    total = turn.input_tokens + turn.output_tokens
    return {
        "prompt_tokens": turn.input_tokens,
        "completion_tokens": turn.output_tokens,
        "total_tokens": total,
    }


def chat_completions(turn: Turn) -> Reply:
    """A `chat.completion`, or a stream of `chat.completion.chunk` events."""
    ident, created = new_id("chatcmpl-"), now()
    if turn.stream:
        return Reply(events=_chat_stream(turn, ident, created))
    message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": None}
    message["annotations"] = []
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    body = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": turn.model,
        "choices": [choice],
        "usage": _usage(turn),
        "system_fingerprint": FINGERPRINT,
    }
    return Reply(body=body)


def _chat_stream(turn: Turn, ident: str, created: int) -> Iterator[bytes]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created}
        data = {**base, "model": turn.model, "system_fingerprint": FINGERPRINT, "choices": choices}
        # With include_usage every chunk carries `usage: null` until the final usage chunk.
        if turn.include_usage:
            data["usage"] = None
        return sse({**data, **extra})

    def delta(content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}

    yield chunk([delta({"role": "assistant", "content": "", "refusal": None})])
    for piece in pieces(turn.text):
        yield chunk([delta({"content": piece})])
    yield chunk([delta({}, "stop")])
    if turn.include_usage:
        yield chunk([], usage=_usage(turn))
    yield DONE


def completions(turn: Turn) -> Reply:
    """A legacy `text_completion`, streamed or not."""
    ident, created = new_id("cmpl-"), now()

    def body(text: str, finish: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        data: dict[str, Any] = {"id": ident, "object": "text_completion", "created": created}
        data.update(model=turn.model, choices=[choice], system_fingerprint=FINGERPRINT)
        if usage is not None:
            data["usage"] = usage
        return data

    if not turn.stream:
        return Reply(body=body(turn.text, "stop", _usage(turn)))

    def events() -> Iterator[bytes]:
        for piece in pieces(turn.text):
            yield sse(body(piece, None))
        yield sse(body("", "stop"))
        if turn.include_usage:
            yield sse({**body("", None), "choices": [], "usage": _usage(turn)})
        yield DONE

    return Reply(events=events())


def responses(turn: Turn) -> Reply:
    """A Responses API `response`, or its stream of typed events ending in `response.completed`."""
    if turn.stream:
        return Reply(events=_responses_stream(turn))
    return Reply(body=_response(turn, new_id("resp_"), new_id("msg_"), now(), completed=True))


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _message_item(msg_id: str, text: str | None) -> dict[str, Any]:
    # No text yet means the item is still being streamed.
    content = [] if text is None else [_output_text(text)]
    status = "in_progress" if text is None else "completed"
    return {
        "type": "message",
        "id": msg_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _response(
    turn: Turn, ident: str, msg_id: str, created: int, *, completed: bool
) -> dict[str, Any]:
    usage = {
        "input_tokens": turn.input_tokens,
        "output_tokens": turn.output_tokens,
        "total_tokens": turn.input_tokens + turn.output_tokens,
    }
    return {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": "completed" if completed else "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": turn.instructions,
        "model": turn.model,
        "output": [_message_item(msg_id, turn.text)] if completed else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage if completed else None,
    }


def _responses_stream(turn: Turn) -> Iterator[bytes]:
    ident, msg_id, created = new_id("resp_"), new_id("msg_"), now()
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        seq += 1
        return sse({"type": kind, "sequence_number": seq - 1, **fields}, event=kind)

    at = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    started = _response(turn, ident, msg_id, created, completed=False)
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    yield event("response.output_item.added", output_index=0, item=_message_item(msg_id, None))
    yield event("response.content_part.added", **at, part=_output_text(""))
    for piece in pieces(turn.text):
        yield event("response.output_text.delta", **at, delta=piece, logprobs=[])
    yield event("response.output_text.done", **at, text=turn.text, logprobs=[])
    yield event("response.content_part.done", **at, part=_output_text(turn.text))
    yield event("response.output_item.done", output_index=0, item=_message_item(msg_id, turn.text))
    done = _response(turn, ident, msg_id, created, completed=True)
    yield event("response.completed", response=done)


def models() -> dict[str, Any]:
    """The `GET /v1/models` list."""
    data = [
        {"id": m, "object": "model", "created": 1700000000, "owned_by": "extproc-demo"}
        for m in MODELS
    ]
    return {"object": "list", "data": data}
