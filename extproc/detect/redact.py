"""Replace finding spans with their redaction tags."""

from __future__ import annotations

from collections.abc import Iterable

from extproc.detect.findings import Finding


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span with its `redaction_tag`; overlapping spans become one tag."""
    length = len(text)
    spans = sorted(
        (
            (max(f.start, 0), min(f.end, length), f.redaction_tag)
            for f in findings
            if min(f.end, length) > max(f.start, 0)
        ),
        key=lambda span: (span[0], -span[1]),  # same start: the longer span first
    )
    merged: list[tuple[int, int, str]] = []
    for start, end, tag in spans:
        if merged and start < merged[-1][1]:
            # Overlap: widen the earlier span and keep its tag (it starts first, so it
            # names what the reader sees first).
            first_start, first_end, first_tag = merged[-1]
            merged[-1] = (first_start, max(first_end, end), first_tag)
        else:
            merged.append((start, end, tag))
    # Right to left, so each replacement leaves the offsets still to be used untouched.
    pieces: list[str] = []
    cursor = len(text)
    for start, end, tag in reversed(merged):
        pieces.append(text[end:cursor])
        pieces.append(tag)
        cursor = start
    pieces.append(text[:cursor])
    return "".join(reversed(pieces))
