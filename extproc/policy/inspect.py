"""Run detection over a message's segments and apply policy: the one call the server makes."""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from extproc.config import Config
from extproc.detect.ensemble import Ensemble
from extproc.detect.findings import Category, Finding
from extproc.detect.redact import redact
from extproc.detect.scanner import Scanner
from extproc.dialects.base import Segment
from extproc.dialects.jsonbody import dump_json
from extproc.dialects.jsonpath import get_at, set_at
from extproc.policy.decision import Decision, decide_request, decide_response
from extproc.policy.placeholders import Placeholders

# Text up to this size is scanned on the event loop (regex takes microseconds); more goes to
# a thread.
_INLINE_SCAN_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Inspection:
    """A decision plus, when it redacts, the rewritten body."""

    decision: Decision
    body: bytes | None = None  # None: forward the original bytes untouched
    # Model findings that missed the verdict (async timing or past the budget): record them.
    late: asyncio.Task[list[Finding]] | None = None


class Inspector:
    """Scans segments with the regex tier and the model ensemble, and asks policy what to do."""

    def __init__(
        self,
        config: Config,
        scanner: Scanner,
        ensemble: Ensemble | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = config
        self.scanner = scanner
        self.ensemble = ensemble if ensemble is not None and ensemble.active else None
        self.timeout = (
            timeout if timeout is not None else config.security_analysis_timeout_ms / 1000
        )

    def scan(self, segments: Sequence[Segment]) -> list[Finding]:
        """Regex findings of every segment, each tagged with its segment index."""
        findings: list[Finding] = []
        for index, segment in enumerate(segments):
            if not segment.text:
                continue
            for finding in self.scanner.scan(segment.text, segment.role):
                findings.append(replace(finding, segment=index))
        return findings

    async def _scan(self, segments: Sequence[Segment]) -> list[Finding]:
        # Small bodies scan in microseconds; a large one goes to a thread so the loop keeps going.
        if sum(len(s.text) for s in segments) <= _INLINE_SCAN_LIMIT:
            return self.scan(segments)
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, self.scan, segments), self.timeout)

    async def request(
        self, segments: Sequence[Segment], body: Any, placeholders: Placeholders | None = None
    ) -> Inspection:
        """Inspect a parsed request body; PII goes out as numbered `placeholders` if given."""
        findings = await self._scan(segments)
        late = None
        if self.ensemble is not None:
            skip = self.config.security_analysis.ml_skip_when_regex_blocks
            if skip and decide_request(findings, self.config).blocked:
                self.ensemble.skipped("regex_decided")
            else:
                result = await self.ensemble.request(segments, findings)
                findings, late = result.findings, result.late
        decision = decide_request(findings, self.config)
        return Inspection(decision, _rewrite(body, segments, decision, placeholders), late)

    async def response(
        self, segments: Sequence[Segment], body: Any, placeholders: Placeholders | None = None
    ) -> Inspection:
        """Inspect a parsed buffered response body, then put `placeholders` back."""
        findings = await self._scan(segments)
        late = None
        if self.ensemble is not None:
            result = await self.ensemble.response(segments, findings)
            findings, late = result.findings, result.late
        decision = decide_response(findings, self.config)
        rewritten = _rewrite(body, segments, decision, None)
        if placeholders is not None and _restore(body, segments, placeholders):
            rewritten = dump_json(body)
        return Inspection(decision, rewritten, late)


def _restore(body: Any, segments: Sequence[Segment], placeholders: Placeholders) -> bool:
    changed = False
    for segment in segments:
        current = get_at(body, segment.path)
        if isinstance(current, str):
            restored = placeholders.restore(current)
            if restored != current:
                set_at(body, segment.path, restored)
                changed = True
    return changed


def _rewrite(
    body: Any,
    segments: Sequence[Segment],
    decision: Decision,
    placeholders: Placeholders | None,
) -> bytes | None:
    if not decision.redact or decision.blocked:
        return None
    by_segment: dict[int, list[Finding]] = defaultdict(list)
    for finding in decision.redact:
        if finding.segment is not None:
            by_segment[finding.segment].append(finding)
    for index, findings in by_segment.items():
        segment = segments[index]
        tag_for = None
        if placeholders is not None:
            tag_for = functools.partial(_numbered, placeholders, segment.text)
        set_at(body, segment.path, redact(segment.text, findings, tag_for))
    return dump_json(body)


def _numbered(placeholders: Placeholders, text: str, finding: Finding) -> str:
    if finding.category is Category.PII:
        return placeholders.tag(finding, text)
    return finding.redaction_tag
