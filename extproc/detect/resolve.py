"""Choose between overlapping matches so each stretch of text is reported once per kind."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from extproc.detect.findings import Category, Severity

# A span of text is one PII value or one secret, never two: these compete across types.
# Other categories compete only within a type, since several attack kinds can share a span.
_CATEGORY_WIDE = frozenset({Category.PII, Category.SECRET})


@dataclass(frozen=True, slots=True)
class Candidate:
    """A match that passed validation and suppression, in folded-text offsets."""

    start: int
    end: int
    category: Category
    type: str
    severity: Severity
    confidence: float
    rule_id: str
    validated: bool  # a checksum confirmed it: better evidence than the pattern alone


def _group(candidate: Candidate) -> str:
    if candidate.category in _CATEGORY_WIDE:
        return candidate.category.value
    return f"{candidate.category.value}/{candidate.type}"


def _rank(candidate: Candidate) -> tuple[int, int, bool, float, str]:
    # rule_id last only to make ties deterministic.
    return (
        candidate.severity,
        candidate.end - candidate.start,
        candidate.validated,
        candidate.confidence,
        candidate.rule_id,
    )


def resolve_overlaps(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Keep the best of each group of overlapping candidates; best = severity, length, evidence."""
    kept: list[Candidate] = []
    # Per group, the accepted spans are disjoint, so sorted starts/ends are enough to test
    # a newcomer against its two neighbours only.
    starts: dict[str, list[int]] = {}
    ends: dict[str, list[int]] = {}
    for candidate in sorted(candidates, key=_rank, reverse=True):
        group = _group(candidate)
        group_starts = starts.setdefault(group, [])
        group_ends = ends.setdefault(group, [])
        index = bisect.bisect_left(group_starts, candidate.start)
        if index < len(group_starts) and group_starts[index] < candidate.end:
            continue
        if index > 0 and group_ends[index - 1] > candidate.start:
            continue
        group_starts.insert(index, candidate.start)
        group_ends.insert(index, candidate.end)
        kept.append(candidate)
    return kept
