"""Reversible redaction: numbered placeholders out, the user's own values back in."""

from __future__ import annotations

import re
from collections.abc import Iterable

from extproc.detect.findings import Finding

# A placeholder as extproc writes it; anything else in brackets is left alone.
PLACEHOLDER = re.compile(r"\[PII:[A-Z0-9_]+_\d+\]")
# An unfinished placeholder at the end of streamed text: hold it back until it closes.
_OPEN_TAIL = re.compile(r"\[(?:P(?:I(?:I(?::[A-Z0-9_]*)?)?)?)?$")


class Placeholders:
    """The placeholder ↔ value table of one request; never leaves this process."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # "[PII:EMAIL_1]" -> "jane@example.com"
        self._tags: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def tag(self, finding: Finding, text: str) -> str:
        """The placeholder for this finding's value (the same value keeps the same number)."""
        value = text[finding.start : finding.end]
        key = (finding.type, value)
        tag = self._tags.get(key)
        if tag is None:
            number = self._counts.get(finding.type, 0) + 1
            self._counts[finding.type] = number
            tag = self._tags[key] = f"[PII:{finding.type.upper()}_{number}]"
            self.values[tag] = value
        return tag

    def restore(self, text: str) -> str:
        """`text` with every known placeholder replaced by its original value."""
        if "[PII:" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(0), m.group(0)), text)

    def spans(self, text: str, offset: int) -> Iterable[tuple[int, int, str]]:
        """(start, end, value) of the known placeholders in `text`, shifted by `offset`."""
        for match in PLACEHOLDER.finditer(text):
            value = self.values.get(match.group(0))
            if value is not None:
                yield offset + match.start(), offset + match.end(), value

    @staticmethod
    def open_tail(text: str) -> int:
        """Length of an unfinished placeholder at the end of `text` (0 if none)."""
        match = _OPEN_TAIL.search(text[-40:])
        return len(match.group(0)) if match else 0
