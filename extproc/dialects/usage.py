"""Token usage and model name from bodies, in either dialect's field names."""

from __future__ import annotations

from typing import Any

from extproc.dialects.stream import Usage


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def response_usage(body: Any) -> Usage | None:
    """`usage` of a non-streaming response: OpenAI chat/completions, Responses, or Anthropic."""
    if not isinstance(body, dict) or not isinstance(body.get("usage"), dict):
        return None
    usage = body["usage"]
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    if prompt is None and completion is None:
        return None
    return Usage(prompt, completion)


def merge_usage(earlier: Usage | None, later: Usage | None) -> Usage | None:
    """Field by field, the later report wins (Anthropic sends input and output separately)."""
    if earlier is None or later is None:
        return later or earlier
    return Usage(
        later.prompt_tokens if later.prompt_tokens is not None else earlier.prompt_tokens,
        later.completion_tokens
        if later.completion_tokens is not None
        else earlier.completion_tokens,
    )


def request_model(body: Any) -> str | None:
    """The `model` a request names, if it is a string."""
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def estimate_tokens(chars: int) -> int:
    """A rough token count for text of this length (about four characters a token)."""
    return (chars + 3) // 4
