"""The SSE relay: hold-back, per-event redaction under any chunking, early stop."""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.config import load_config
from extproc.detect.redact import holdback
from extproc.detect.scanner import Scanner
from extproc.dialects.stream import decoder_for_path
from extproc.policy.decision import redacts_output
from extproc.policy.stream_guard import StreamGuard
from extproc.server.streaming import SseRelay

SCANNER = Scanner.load()
CONFIG = load_config(environ={}, overrides=[("pii.action", "alert_and_redact")])


def event(text: str) -> bytes:
    data = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def relay() -> SseRelay:
    decoder = decoder_for_path("/v1/chat/completions")
    assert decoder is not None
    redacts = functools.partial(redacts_output, config=CONFIG)
    return SseRelay(decoder, StreamGuard(CONFIG, SCANNER), redacts)


def content(raw: bytes) -> str:
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: {"):
            out.append(json.loads(block[6:])["choices"][0]["delta"].get("content", ""))
    return "".join(out)


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("hello world", "world"),
        ("hello world ", ""),
        ("mail jane@exa", "jane@exa"),
        ("card 4111 1111 1111", "4111 1111 1111"),
        ("call +44 20 7946", "+44 20 7946"),
        ("the answer is 42 apples", "42 apples"),  # conservative: NINs end in a letter
        ("the answer is yes", "yes"),
    ],
)
def test_holdback_keeps_what_could_still_grow(text: str, held: str) -> None:
    assert text[len(text) - holdback(text, 512) :] == held


def test_holdback_is_capped() -> None:
    assert holdback("x" * 1000, 64) == 64


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=20))
def test_redaction_is_the_same_for_any_chunking(cuts: list[int]) -> None:
    text = "Contact jane.doe@example.com or 4111 1111 1111 1111 today, thanks."
    pieces, rest = [], text
    for cut in cuts:
        if rest:
            pieces.append(rest[:cut])
            rest = rest[cut:]
    if rest:
        pieces.append(rest)
    r = relay()
    raw = b"".join(r.chunk(event(p), end=False).body for p in pieces)
    raw += r.chunk(b"data: [DONE]\n\n", end=True).body
    assert content(raw) == "Contact [PII:EMAIL] or [PII:CREDIT_CARD] today, thanks."
    assert raw.endswith(b"data: [DONE]\n\n")


def test_plain_words_are_not_delayed_past_the_next_space() -> None:
    r = relay()
    first = r.chunk(event("Hello there, how are "), end=False)
    assert content(first.body) == "Hello there, how are "
    second = r.chunk(event("you"), end=False)
    assert second.body == b""  # "you" could still be the start of an address
    third = r.chunk(event(" today"), end=False)
    assert content(third.body) == "you"


def test_numbered_words_do_not_chain_into_a_hold() -> None:
    text = "token0 token1 token2 token3 "
    assert holdback(text, 512) == 0
