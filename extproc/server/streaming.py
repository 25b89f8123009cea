"""Relay an SSE response through FULL_DUPLEX_STREAMED: check, redact, forward, or stop early.

Every body message Envoy sends is parsed into complete SSE events and their model text is
checked. Events are forwarded in order, except the trailing text that could still be the
first half of a secret or PII value the next chunk completes (`detect.redact.holdback`):
that waits, so no part of a redacted value ever reaches the client. Events are rewritten
(with the dialect's `rewrite_text`) where a redaction touches their text. When the check
says stop, only the events before the offending text are forwarded, then the dialect's
warning event, and the stream ends: Envoy then closes the upstream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from extproc.detect.findings import Finding
from extproc.detect.redact import holdback
from extproc.dialects.sse import SseEvent, SseParser
from extproc.dialects.stream import StreamDecoder, Usage
from extproc.dialects.usage import merge_usage
from extproc.policy.placeholders import Placeholders
from extproc.policy.stream_guard import StreamGuard, StreamVerdict

STOP_MESSAGE = "Response stopped by security policy: {types}"


@dataclass(frozen=True, slots=True)
class RelayOutput:
    """Bytes to forward for one body message, and whether the stream ends with them."""

    body: bytes
    end: bool
    verdict: StreamVerdict
    stopped: bool = False
    unparsed: int = 0  # events whose data could not be understood (forwarded unchanged)
    redacted: int = 0  # events rewritten because a redaction touched them
    first_text: bool = False  # this message carried the stream's first model text
    usage: Usage | None = None  # usage the events of this message reported, merged


@dataclass(frozen=True, slots=True)
class _Held:
    event: SseEvent
    text: str
    start: int  # stream offset of `text`
    drop: bool = False  # the usage chunk extproc asked for on the client's behalf

    @property
    def end(self) -> int:
        return self.start + len(self.text)


class SseRelay:
    """Per-response streaming state."""

    def __init__(
        self,
        decoder: StreamDecoder,
        guard: StreamGuard,
        redacts: Callable[[Finding], bool] | None = None,
        drop_usage_events: bool = False,
        placeholders: Placeholders | None = None,
    ) -> None:
        self.decoder = decoder
        self.guard = guard
        self.redacts = redacts  # None: nothing is redacted, so nothing is held back
        self.drop_usage_events = drop_usage_events
        self.placeholders = placeholders  # reversible redaction: values to put back
        self.restores: dict[int, tuple[int, int, str]] = {}  # by stream start offset
        self.parser = SseParser()
        self.held: deque[_Held] = deque()
        self.position = 0  # stream offset of the next model character
        self.redactions: list[Finding] = []
        self.disabled = False  # after an internal error with failure_mode open: pass through
        # What a failing chunk() had taken in but not yet placed in `held`: fail_open()
        # forwards exactly these bytes, once.
        self._incoming = b""
        self._parsed: list[SseEvent] = []

    def chunk(self, data: bytes, end: bool) -> RelayOutput:
        """Process one body message from Envoy."""
        if self.disabled:
            return RelayOutput(data, end, StreamVerdict())
        self._incoming = data
        self._parsed = self.parser.feed(data)
        self._incoming = b""
        texts: list[str] = []
        items: list[_Held] = []
        unparsed = 0
        usage: Usage | None = None
        position = self.position
        for event in self._parsed:
            delta = self.decoder.decode(event)
            unparsed += not delta.parsed
            drop = False
            if delta.usage is not None:
                usage = merge_usage(usage, delta.usage)
                drop = self.drop_usage_events and not delta.text
            items.append(_Held(event, delta.text, position, drop))
            position += len(delta.text)
            texts.append(delta.text)
        first_text = self.position == 0 and position > 0
        verdict = self.guard.feed("".join(texts))
        self.held.extend(items)
        self._parsed = []
        self.position = position
        if self.redacts is not None:
            self.redactions += [f for f in verdict.findings if self.redacts(f)]
        if self.placeholders is not None:
            for span in self.placeholders.spans(self.guard.text, self.guard.offset):
                self.restores.setdefault(span[0], span)
        if verdict.stop_at is not None:
            body, rewritten = self._release(verdict.stop_at)
            types = ",".join(sorted({f.type for f in verdict.findings}))
            warning = self.decoder.warning_events(
                STOP_MESSAGE.format(types=types), "content_filter"
            )
            return RelayOutput(
                body + warning, True, verdict, True, unparsed, rewritten, first_text, usage
            )
        if end:
            body, rewritten = self._release(None)
            body += self.parser.flush()  # an unterminated tail is forwarded as it came
        else:
            body, rewritten = self._release(self._safe_point())
        return RelayOutput(body, end, verdict, False, unparsed, rewritten, first_text, usage)

    def _safe_point(self) -> int:
        held = 0
        if self.redacts is not None:
            held = holdback(self.guard.text, self.guard.overlap)
        if self.placeholders is not None:
            held = max(held, Placeholders.open_tail(self.guard.text))
        return self.position - held

    def _release(self, until: int | None) -> tuple[bytes, int]:
        """Forward held events, in order, whose text ends at or before `until` (None: all)."""
        out: list[bytes] = []
        rewritten = 0
        while self.held and (until is None or self.held[0].end <= until):
            item = self.held.popleft()
            if item.drop:
                continue
            touching = [
                span for span in self._spans() if span[0] < item.end and span[1] > item.start
            ]
            if item.text and touching:
                new_text = _rewrite_piece(item.text, item.start, touching)
                out.append(self.decoder.rewrite_text(item.event, new_text))
                rewritten += 1
            else:
                out.append(item.event.raw)
        released = self.held[0].start if self.held else self.position
        self.redactions = [f for f in self.redactions if f.end > released]
        self.restores = {k: v for k, v in self.restores.items() if v[1] > released}
        return b"".join(out), rewritten

    def _spans(self) -> list[tuple[int, int, str]]:
        spans = [(f.start, f.end, f.redaction_tag) for f in self.redactions]
        spans.extend(self.restores.values())
        return spans

    def fail_open(self) -> bytes:
        """After an internal error: forward everything held back and received, unchecked."""
        self.disabled = True
        held = b"".join(item.event.raw for item in self.held)
        held += b"".join(event.raw for event in self._parsed)
        self.held.clear()
        self._parsed = []
        return held + self.parser.flush() + self._incoming

    def fail_closed(self) -> bytes:
        """After an internal error with failure_mode closed: the warning that ends the stream."""
        self.disabled = True
        return self.decoder.warning_events(
            "Security analysis failed; response stopped (fail-closed).", "analysis_failed"
        )


def _rewrite_piece(text: str, start: int, spans: list[tuple[int, int, str]]) -> str:
    """One event's text with each span replaced; the replacement goes where a span starts.

    A span that began in an earlier event already left its replacement there, so its part in
    this event is dropped; of overlapping spans the first one wins.
    """
    out: list[str] = []
    cursor = 0
    for span_start, span_end, replacement in sorted(spans):
        local_start = span_start - start
        local_end = min(span_end - start, len(text))
        if local_end <= cursor:
            continue
        if local_start < cursor:  # began earlier (or overlaps the previous span): cut only
            cursor = local_end
            continue
        out.append(text[cursor:local_start])
        out.append(replacement)
        cursor = local_end
    out.append(text[cursor:])
    return "".join(out)
