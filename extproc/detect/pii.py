"""False-positive suppression for PII matches: code, URLs and well-known placeholder values.

A 16-digit number in a fenced code block is test data, a digit run in a URL path is an id, and
`123-45-6789` is the textbook example SSN. Only PII rules consult this; injection and secret
rules are never suppressed (a leaked key inside a code block is still a leaked key).
"""

from __future__ import annotations

import bisect
from enum import StrEnum


class Suppression(StrEnum):
    """Contexts in which a PII rule's match is dropped."""

    CODE_FENCE = "code_fence"  # between ``` (or ~~~) fences
    INDENTED_CODE = "indented_code"  # on a line indented by 4+ spaces or a tab
    URL = "url"  # in a whitespace-delimited token that has "://" or "www." before the match
    PLACEHOLDER = "placeholder"  # all one digit, or 9+ consecutive digits (123-45-6789)


ALL_SUPPRESSIONS = frozenset(Suppression)

_FENCES = ("```", "~~~")
# Counting up (1234567890 included) or down; wrapping runs such as 456789012 are real-looking
# values (the guide's own SSN example) and are not placeholders.
_SEQUENTIAL = ("01234567890", "9876543210")
_MIN_SEQUENTIAL = 9  # shorter runs like "123456" occur inside genuine ids too


def is_placeholder(span: str) -> bool:
    """True for a value made of one repeated digit or of consecutive ascending digits."""
    digits = "".join(ch for ch in span if "0" <= ch <= "9")
    if not digits:
        return False
    if digits.count(digits[0]) == len(digits):
        return True
    return len(digits) >= _MIN_SEQUENTIAL and any(digits in run for run in _SEQUENTIAL)


def _fenced_regions(text: str) -> list[int]:
    """Flat sorted [open0, close0, open1, close1, ...]: the spans between paired fences."""
    marks: list[int] = []
    for fence in _FENCES:
        position = text.find(fence)
        while position != -1:
            marks.append(position)
            position = text.find(fence, position + len(fence))
    marks.sort()
    if len(marks) % 2:
        # An unclosed fence runs to the end of the text, as Markdown renders it.
        marks.append(len(text))
    return marks


class SuppressionContext:
    """Answers "is this span in code / a URL?" for one text; the fence scan runs on first use."""

    __slots__ = ("_fences", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._fences: list[int] | None = None

    def in_code_fence(self, start: int) -> bool:
        """True when `start` lies between an opening and a closing fence."""
        if self._fences is None:
            self._fences = _fenced_regions(self._text)
        # An odd insertion point means the offset sits inside an [open, close) pair.
        return bisect.bisect_right(self._fences, start) % 2 == 1

    def on_indented_line(self, start: int) -> bool:
        """True when the line holding `start` is indented like a Markdown code block."""
        line_start = self._text.rfind("\n", 0, start) + 1
        return self._text.startswith(("    ", "\t"), line_start)

    def in_url(self, start: int) -> bool:
        """True when the whitespace-delimited token holding `start` began as a URL."""
        text = self._text
        token_start = max(text.rfind(ch, 0, start) for ch in " \t\r\n") + 1
        prefix = text[token_start:start]
        return "://" in prefix or prefix[:4].lower() == "www."

    def suppressed(self, start: int, end: int, flags: frozenset[Suppression]) -> bool:
        """True when any of `flags` says the [start, end) match is not real PII."""
        if Suppression.PLACEHOLDER in flags and is_placeholder(self._text[start:end]):
            return True
        if Suppression.CODE_FENCE in flags and self.in_code_fence(start):
            return True
        if Suppression.INDENTED_CODE in flags and self.on_indented_line(start):
            return True
        return Suppression.URL in flags and self.in_url(start)
