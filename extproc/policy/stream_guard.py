"""Incremental output checks for a streamed response: new text in, a stop verdict out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from extproc.config import Config
from extproc.detect.findings import Finding, Role
from extproc.detect.scanner import Scanner


@dataclass(slots=True)
class StreamVerdict:
    """What one check of new text found; offsets index the stream's whole text so far."""

    findings: list[Finding] = field(default_factory=list)
    stop_at: int | None = None  # stream offset of the first finding that must end the stream


class StreamGuard:
    """Scans each new piece of model text together with a tail of what came before.

    The tail (`streaming_analysis.overlap_chars`) is scanned again so a secret split across
    chunks is still one match; findings wholly inside the tail were reported by an earlier
    check and are not reported twice.
    """

    def __init__(self, config: Config, scanner: Scanner) -> None:
        streaming = config.streaming_analysis
        self.scanner = scanner
        self.overlap = streaming.overlap_chars
        self.stop_severity = (
            streaming.early_stop_min_severity if streaming.early_stop_on_critical else None
        )
        self.min_confidence = config.enforcement.min_confidence
        self.text = ""  # kept only as long as the overlap needs; `offset` is its stream position
        self.offset = 0
        self.total = 0  # characters of model text seen
        # The whole text, for one full analysis at the end (bounded like a buffered body).
        self.pieces: list[str] = []
        self.limit = config.server.max_response_size_bytes
        self.reported: set[tuple[str, int]] = set()
        self.full_text = ""  # set by final()

    def feed(self, new_text: str) -> StreamVerdict:
        """Check `new_text` (just decoded from the stream) before it is forwarded."""
        verdict = StreamVerdict()
        if not new_text:
            return verdict
        window = self.text + new_text
        window_start = self.offset
        fresh_from = len(self.text)  # findings must reach into the new text
        self.total += len(new_text)
        for finding in self.scanner.scan(window, Role.OUTPUT):
            if finding.end <= fresh_from:
                continue
            shifted = replace(
                finding, start=finding.start + window_start, end=finding.end + window_start
            )
            verdict.findings.append(shifted)
            self.reported.add((shifted.type, shifted.start))
            if (
                self.stop_severity is not None
                and finding.severity >= self.stop_severity
                and finding.confidence >= self.min_confidence
                and (verdict.stop_at is None or shifted.start < verdict.stop_at)
            ):
                verdict.stop_at = shifted.start
        if self.total <= self.limit:
            self.pieces.append(new_text)
        keep = window[-self.overlap :]
        self.offset = window_start + len(window) - len(keep)
        self.text = keep
        return verdict

    def final(self) -> list[Finding]:
        """One full analysis of the whole streamed text: findings the chunk checks missed.

        They are reported (metrics, the request record); what was sent cannot change.
        """
        text = self.full_text = "".join(self.pieces)
        self.pieces = []
        return [
            f
            for f in self.scanner.scan(text, Role.OUTPUT)
            if (f.type, f.start) not in self.reported
        ]
