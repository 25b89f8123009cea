"""Replace finding spans with their redaction tags."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from extproc.detect.findings import Finding


def redact(
    text: str, findings: Iterable[Finding], tag_for: Callable[[Finding], str] | None = None
) -> str:
    """Replace each finding's span with its tag; overlapping spans become one tag.

    The tag is `finding.redaction_tag` unless `tag_for` names another (numbered placeholders).
    """
    length = len(text)
    spans = sorted(
        (
            (max(f.start, 0), min(f.end, length), tag_for(f) if tag_for else f.redaction_tag)
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


# Characters that occur inside an e-mail address, URL, key or token: a trailing run of them
# may be the first half of a match that the next chunk completes.
_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._%+-/=:~#"
)
# Card numbers, phone numbers, IBANs and national ids come as short groups with separators:
# all-digit groups of up to 6 (cards, phones: "4111", "(555)", "+44") or up to 4 characters
# with a digit (IBAN "DE89", NIN "AB 12").
_GROUP_MAX = 6
_DIGITISH = frozenset("0123456789()+")


def _is_group(group: str) -> bool:
    if not group or len(group) > _GROUP_MAX:
        return False
    if all(c in _DIGITISH for c in group):
        return True
    return len(group) <= 4 and any(c.isdigit() for c in group)


def holdback(text: str, limit: int) -> int:
    """How many trailing characters of streamed text could still grow into a match.

    The trailing unbroken token, plus the short digit-bearing groups before it (as in
    `4111 1111 1111` or `+44 20 7946`); never more than `limit`.
    """
    i = len(text)
    while i > 0 and text[i - 1] in _TOKEN_CHARS:
        i -= 1
    while i > 1 and text[i - 1] in " -" and text[i - 2] in _TOKEN_CHARS:
        j = i - 1
        while j > 0 and text[j - 1] in _TOKEN_CHARS and i - 1 - j < _GROUP_MAX + 1:
            j -= 1
        group = text[j : i - 1]
        if not _is_group(group):
            break
        i = j
    return min(len(text) - i, limit)
