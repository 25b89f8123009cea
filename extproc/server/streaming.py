"""Relay an SSE response through FULL_DUPLEX_STREAMED: check each chunk, forward, or stop early.

Every body message Envoy sends is parsed into complete SSE events, their model text is
checked, and the events are forwarded in the same answer. An event split across messages
waits for its end (it cannot be checked half-read). When the check says stop, only the events
before the offending text are forwarded, followed by the dialect's warning event, and the
stream ends: Envoy then closes the upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.dialects.sse import SseParser
from extproc.dialects.stream import StreamDecoder
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


class SseRelay:
    """Per-response streaming state."""

    def __init__(self, decoder: StreamDecoder, guard: StreamGuard) -> None:
        self.decoder = decoder
        self.guard = guard
        self.parser = SseParser()
        self.position = 0  # stream offset of the next model character
        self.disabled = False  # after an internal error with failure_mode open: pass through

    def chunk(self, data: bytes, end: bool) -> RelayOutput:
        """Process one body message from Envoy."""
        if self.disabled:
            return RelayOutput(data, end, StreamVerdict())
        events = self.parser.feed(data)
        texts: list[str] = []
        unparsed = 0
        for event in events:
            delta = self.decoder.decode(event)
            unparsed += not delta.parsed
            texts.append(delta.text)
        verdict = self.guard.feed("".join(texts))
        if verdict.stop_at is not None:
            kept: list[bytes] = []
            position = self.position
            for event, text in zip(events, texts, strict=True):
                if position + len(text) > verdict.stop_at:
                    break  # this event carries (part of) the offending text
                kept.append(event.raw)
                position += len(text)
            types = ",".join(sorted({f.type for f in verdict.findings if f.start >= 0}))
            warning = self.decoder.warning_events(
                STOP_MESSAGE.format(types=types), "content_filter"
            )
            return RelayOutput(b"".join(kept) + warning, True, verdict, True, unparsed)
        self.position += sum(len(t) for t in texts)
        body = b"".join(event.raw for event in events)
        if end:
            body += self.parser.flush()  # an unterminated tail is forwarded as it came
        return RelayOutput(body, end, verdict, unparsed=unparsed)

    def fail_open(self, data: bytes, end: bool) -> bytes:
        """After an internal error: forward what was held back plus this chunk, unchecked."""
        self.disabled = True
        return self.parser.flush() + data

    def fail_closed(self) -> bytes:
        """After an internal error with failure_mode closed: the warning that ends the stream."""
        self.disabled = True
        return self.decoder.warning_events(
            "Security analysis failed; response stopped (fail-closed).", "analysis_failed"
        )
