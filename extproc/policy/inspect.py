"""Run detection over a message's segments and apply policy: the one call the server makes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from extproc.config import Config
from extproc.detect.findings import Finding
from extproc.detect.redact import redact
from extproc.detect.scanner import Scanner
from extproc.dialects.base import Segment
from extproc.dialects.jsonbody import dump_json
from extproc.dialects.jsonpath import set_at
from extproc.policy.decision import Decision, decide_request, decide_response


@dataclass(frozen=True, slots=True)
class Inspection:
    """A decision plus, when it redacts, the rewritten body."""

    decision: Decision
    body: bytes | None = None  # None: forward the original bytes untouched


class Inspector:
    """Scans segments with the regex tier and asks policy what to do."""

    def __init__(self, config: Config, scanner: Scanner) -> None:
        self.config = config
        self.scanner = scanner

    def scan(self, segments: Sequence[Segment]) -> list[Finding]:
        """Findings of every segment, each tagged with its segment index."""
        findings: list[Finding] = []
        for index, segment in enumerate(segments):
            if not segment.text:
                continue
            for finding in self.scanner.scan(segment.text, segment.role):
                findings.append(replace(finding, segment=index))
        return findings

    def request(self, segments: Sequence[Segment], body: Any) -> Inspection:
        """Inspect a parsed request body."""
        decision = decide_request(self.scan(segments), self.config)
        return Inspection(decision, _rewrite(body, segments, decision))

    def response(self, segments: Sequence[Segment], body: Any) -> Inspection:
        """Inspect a parsed buffered response body."""
        decision = decide_response(self.scan(segments), self.config)
        return Inspection(decision, _rewrite(body, segments, decision))


def _rewrite(body: Any, segments: Sequence[Segment], decision: Decision) -> bytes | None:
    if not decision.redact or decision.blocked:
        return None
    by_segment: dict[int, list[Finding]] = defaultdict(list)
    for finding in decision.redact:
        if finding.segment is not None:
            by_segment[finding.segment].append(finding)
    for index, findings in by_segment.items():
        segment = segments[index]
        set_at(body, segment.path, redact(segment.text, findings))
    return dump_json(body)
