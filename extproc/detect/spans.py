"""Grow a match's end over the rest of a token.

Patterns are written to stop right after the distinctive prefix of a token (`sk-` + 20 chars,
`eyJ…​.eyJ…​.`): hyperscan reports one match per possible end offset, so an unbounded tail would
cost one Python callback per character. The scanner extends the span here instead, at C speed.
"""

from __future__ import annotations

import string
from enum import StrEnum


class Extend(StrEnum):
    """Character classes a rule's span may be extended over after a match."""

    WORD = "word"  # [A-Za-z0-9_]
    BASE64 = "base64"  # [A-Za-z0-9+/=]
    BASE64URL = "base64url"  # [A-Za-z0-9_-]
    HEX = "hex"  # [0-9A-Fa-f]
    NONSPACE = "nonspace"  # up to the next whitespace, minus trailing punctuation


_ALNUM = string.ascii_letters + string.digits
_CHARSETS: dict[Extend, str] = {
    Extend.WORD: _ALNUM + "_",
    Extend.BASE64: _ALNUM + "+/=",
    Extend.BASE64URL: _ALNUM + "_-",
    Extend.HEX: string.hexdigits,
}
BASE64_CHARS = _ALNUM + "+/_-"  # both alphabets: encoded payloads come in either
HEX_CHARS = string.hexdigits

# Sentence punctuation that follows a token in prose rather than belonging to it.
_TRAILING_PUNCTUATION = ".,;:!?)]}>\"'`"

# No real secret token is longer; caps the work a crafted endless token can cause.
MAX_TOKEN_EXTENSION = 8_192


def run_length(text: str, start: int, chars: str, limit: int) -> int:
    """Length of the run of `chars` starting at `start`, at most `limit`."""
    window = text[start : start + limit]
    return len(window) - len(window.lstrip(chars))


def extend_end(text: str, end: int, extend: Extend) -> int:
    """The new end offset after growing [.., end) over `extend`'s character class."""
    if extend is Extend.NONSPACE:
        window = text[end : end + MAX_TOKEN_EXTENSION]
        if not window or window[0].isspace():
            return end
        token = window.split(None, 1)[0].rstrip(_TRAILING_PUNCTUATION)
        return end + len(token)
    return end + run_length(text, end, _CHARSETS[extend], MAX_TOKEN_EXTENSION)
