"""Incremental server-sent events (SSE) parsing that keeps every byte exactly as received.

The parser cuts a response body into events at blank lines (WHATWG event stream rules:
lines end in CRLF, LF or CR) and reads the `event` and `data` fields of each. Every event
keeps its raw bytes, so a caller can forward an event untouched, and the concatenation of
all raw events plus `flush()` is the input byte for byte, however the body was chunked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A blank line is a line terminator directly after another one. The atomic groups stop
# "\r\n" from being read as "\r" then "\n" (which would end an event that has not ended).
_BLANK_LINE = re.compile(rb"(?>\r\n|\n|\r)(?>\r\n|\n|\r)")
_BOM = b"\xef\xbb\xbf"
_COLON = 0x3A


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event: its exact bytes (blank line included) and its `event` and `data` fields."""

    # When a chunk boundary split a CRLF that ended the previous event, the lone LF that
    # completes it is kept at the start of this event's raw bytes (parsers skip it).
    raw: bytes
    event: str | None  # the last `event:` field, None if absent
    data: str | None  # `data:` lines joined with "\n"; None when the event has no data field


class SseParser:
    """Feed it body chunks; it returns the events they complete and holds back the rest."""

    __slots__ = ("_after_cr", "_at_start", "_buf", "_lead")

    def __init__(self) -> None:
        self._buf = b""
        # Bytes at the start of the buffer that belong to no field: the stream's byte order
        # mark, or an LF that completes the CRLF which ended the previous event.
        self._lead = 0
        # The last event ended in CR at the end of a chunk: a leading LF next is its partner.
        self._after_cr = False
        # A byte order mark is only stripped at the very start of the stream.
        self._at_start = True

    @property
    def pending(self) -> int:
        """Bytes held back because they do not yet form a complete event."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by this chunk, in order; an incomplete tail is kept."""
        if not chunk:
            return []
        if self._at_start:
            # A leading byte order mark is skipped like a lead byte: kept in raw, not parsed.
            chunk = self._buf + chunk
            self._buf = b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._buf = chunk  # perhaps the start of a BOM; wait for more bytes
                return []
            self._at_start = False
            if chunk.startswith(_BOM):
                self._lead = len(_BOM)
        elif self._after_cr:
            # The buffer is empty here: the CR-ended event consumed all of it.
            self._after_cr = False
            self._lead = 1 if chunk[0] == 0x0A else 0
        held = len(self._buf)
        buf = self._buf + chunk if held else chunk
        # The held bytes hold no blank line, and one is at most 4 bytes long, so the
        # search can resume near their end rather than rescan a long partial event.
        resume = held - 3 if held > 3 else 0
        if self._lead == 0 and b"\r" not in buf:
            return self._split_lf(buf, resume)
        return self._split_any(buf, resume)

    def flush(self) -> bytes:
        """The unterminated remainder (an event never closed by a blank line); resets the parser."""
        rest = self._buf
        self._buf = b""
        self._lead = 0
        self._after_cr = False
        self._at_start = True
        return rest

    def _split_lf(self, buf: bytes, resume: int) -> list[SseEvent]:
        # Fast path for the usual LF-only stream: an event ends at the first "\n\n",
        # or right away when the block opens with a blank line.
        events: list[SseEvent] = []
        pos = 0
        size = len(buf)
        while pos < size:
            if buf[pos] == 0x0A:
                end = pos + 1
            else:
                found = buf.find(b"\n\n", pos if pos > resume else resume)
                if found < 0:
                    break
                end = found + 2
            raw = buf[pos:end]
            event, data = _fields_lf(raw)
            events.append(SseEvent(raw, event, data))
            pos = end
        self._buf = buf[pos:] if pos else buf
        return events

    def _split_any(self, buf: bytes, resume: int) -> list[SseEvent]:
        events: list[SseEvent] = []
        pos = 0
        size = len(buf)
        while pos < size:
            lead = self._lead
            start = pos + lead
            if start >= size:
                break
            first = buf[start]
            if first == 0x0A:
                end = start + 1
            elif first == 0x0D:
                # A blank line opens the block; a CR at the very end may still gain an LF.
                end = start + 2 if buf[start + 1 : start + 2] == b"\n" else start + 1
            else:
                match = _BLANK_LINE.search(buf, start if start > resume else resume)
                if match is None:
                    break
                end = match.end()
            raw = buf[pos:end]
            event, data = _fields(raw[lead:] if lead else raw)
            events.append(SseEvent(raw, event, data))
            self._lead = 0
            pos = end
        self._buf = buf[pos:] if pos else buf
        # An event that ends in CR at the buffer's end may be followed by the LF of a CRLF.
        if pos and pos == size and buf[size - 1] == 0x0D:
            self._after_cr = True
        return events


def _fields_lf(block: bytes) -> tuple[str | None, str | None]:
    """`_fields` for an LF-only block, with shortcuts for the shapes LLM APIs send."""
    last = len(block) - 2
    if block.startswith(b"data: "):
        if block.find(b"\n") == last:  # a single `data: ...` line
            return None, block[6:last].decode("utf-8", "replace")
    elif block.startswith(b"event: "):
        eol = block.find(b"\n")
        # `event: ...` then one `data: ...` line
        if block.startswith(b"data: ", eol + 1) and block.find(b"\n", eol + 1) == last:
            return (
                block[7:eol].decode("utf-8", "replace"),
                block[eol + 7 : last].decode("utf-8", "replace"),
            )
    return _fields(block)


def _fields(block: bytes) -> tuple[str | None, str | None]:
    """The `event` and `data` fields of one complete event block."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    event: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == _COLON:
            continue  # the blank line that ends the event, or a comment
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        # id, retry and unknown fields do not matter to the analysers.
    return (
        None if event is None else event.decode("utf-8", "replace"),
        None if not data else b"\n".join(data).decode("utf-8", "replace"),
    )


__all__ = ["SseEvent", "SseParser"]
