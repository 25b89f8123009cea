"""Append-only spill journal: records survive a database outage and a process crash.

On-disk layout (one directory):

* ``spill.journal`` -- frames, each ``>I length`` + ``>I crc32(payload)`` + payload.
* ``spill.offset`` -- the replay checkpoint (decimal byte offset), replaced atomically.

Recovery choices (losing data is the worst outcome, replaying twice is harmless because
the database upserts):

* A frame whose CRC does not match but whose length is plausible (1..64 MiB, inside the
  file) is skipped as exactly one record -- but only if the byte after it is the end of
  the file or the start of a valid frame; otherwise the length itself is suspect and we
  resynchronise instead, so one flipped length bit cannot swallow good records.
* An implausible length triggers a byte-by-byte scan for the next offset where a frame
  with a valid CRC starts; everything in between counts as one skipped region.
* Empty records are rejected: an all-zero header is a valid CRC for an empty payload,
  and zero-filled blocks are what a crash typically leaves behind, so length 0 must
  never parse as a record.
* On open, whatever follows the last valid frame (a torn write) is truncated away so new
  appends start on a frame boundary.
* When everything is acknowledged the checkpoint is persisted as 0 *before* the journal
  is truncated: a crash in between replays duplicates instead of skipping new records.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

JOURNAL_NAME = "spill.journal"
OFFSET_NAME = "spill.offset"
MAX_RECORD = 64 * 1024 * 1024

_HEADER = struct.Struct(">II")
_HEADER_SIZE = _HEADER.size
# Resync reads this many candidate start offsets per pread; keeps memory flat on huge files.
_RESYNC_CHUNK = 64 * 1024


class _Scan(NamedTuple):
    records: list[bytes]
    next_offset: int  # where the scan stopped: after the last record or skipped region
    last_good: int  # just after the last valid record (the scan start if none)


class Journal:
    """Append-only, crash-safe journal of opaque records (bytes) in one directory."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        """Open (creating if needed) the journal in ``directory`` and recover its state."""
        self._dir = Path(directory)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._skipped = 0
        # Corrupt regions starting below this offset were already counted and logged;
        # re-reading them (read_batch without ack) must not inflate the metric.
        self._counted_until = 0
        # (checkpoint, token, records) of the last read_batch, so ack needs no re-scan.
        self._last_read: tuple[int, int, int] | None = None
        self._closed = False
        self._end = 0
        self._checkpoint = 0
        self._pending = 0

        self._dir.mkdir(parents=True, exist_ok=True)
        self._path = self._dir / JOURNAL_NAME
        self._offset_path = self._dir / OFFSET_NAME
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._sync_dir()
            self._end = os.fstat(self._fd).st_size
            self._checkpoint = self._load_checkpoint()
            self._recover()
        except BaseException:
            os.close(self._fd)
            raise

    # -- public API -------------------------------------------------------------------

    @property
    def skipped(self) -> int:
        """Number of corrupt records (or regions) skipped so far."""
        return self._skipped

    def append(self, records: Sequence[bytes]) -> None:
        """Durably append one batch; returns only after the data is fsynced."""
        if not records:
            return
        parts: list[bytes] = []
        for record in records:
            size = len(record)
            if size == 0 or size > MAX_RECORD:
                raise ValueError(f"record size {size} outside 1..{MAX_RECORD} bytes")
            parts.append(_HEADER.pack(size, zlib.crc32(record)))
            parts.append(record)
        # One write + one fsync per batch: the fsync dominates, so batching is the point.
        blob = b"".join(parts)
        with self._lock:
            self._check_open()
            start = self._end
            try:
                self._pwrite_all(blob, start)
                if self._fsync:
                    os.fsync(self._fd)
            except BaseException:
                self._rollback(start)
                raise
            self._end = start + len(blob)
            self._pending += len(records)

    def pending(self) -> int:
        """Number of records appended but not yet acknowledged."""
        with self._lock:
            return self._pending

    def read_batch(self, limit: int) -> tuple[list[bytes], int]:
        """Return up to ``limit`` records from the checkpoint and the offset to ``ack``."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._lock:
            self._check_open()
            start = self._checkpoint
            scan = self._scan(start, self._end, limit)
            self._last_read = (start, scan.next_offset, len(scan.records))
            return scan.records, scan.next_offset

    def ack(self, offset: int) -> None:
        """Mark everything before ``offset`` (a read_batch token) as stored, durably."""
        with self._lock:
            self._check_open()
            if offset < self._checkpoint or offset > self._end:
                raise ValueError(f"ack offset {offset} outside [{self._checkpoint}, {self._end}]")
            if offset == self._end:
                self._reset()
                return
            if offset == self._checkpoint:
                return
            if self._last_read is not None and self._last_read[:2] == (self._checkpoint, offset):
                done = self._last_read[2]
            else:
                done = len(self._scan(self._checkpoint, offset, None).records)
            self._persist_offset(offset)
            self._checkpoint = offset
            self._last_read = None
            # Clamped: a record that rotted on disk after append was counted but never read.
            self._pending = max(0, self._pending - done)

    def close(self) -> None:
        """Close the journal file; further calls raise."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    # -- recovery ---------------------------------------------------------------------

    def _load_checkpoint(self) -> int:
        try:
            text = self._offset_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("spill journal: unreadable checkpoint (%s); replaying from 0", exc)
            return 0
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0 or value > self._end:
            # Replaying from the start only costs duplicates; trusting a bad offset loses data.
            log.warning(
                "spill journal: checkpoint %r invalid for a %d-byte journal; replaying from 0",
                text,
                self._end,
            )
            return 0
        return value

    def _recover(self) -> None:
        scan = self._scan(self._checkpoint, self._end, None)
        self._pending = len(scan.records)
        if scan.last_good < self._end:
            log.warning(
                "spill journal: truncating %d unreadable trailing bytes at offset %d",
                self._end - scan.last_good,
                scan.last_good,
            )
            os.ftruncate(self._fd, scan.last_good)
            if self._fsync:
                os.fsync(self._fd)
            self._end = scan.last_good
            self._counted_until = min(self._counted_until, self._end)
        if self._end > 0 and self._checkpoint == self._end:
            self._reset()

    # -- scanning ---------------------------------------------------------------------

    def _scan(self, start: int, end: int, limit: int | None) -> _Scan:
        records: list[bytes] = []
        pos = last_good = start
        while pos < end and (limit is None or len(records) < limit):
            frame = self._frame_at(pos, end)
            if frame is not None:
                payload, pos = frame
                records.append(payload)
                last_good = pos
                continue
            header = self._header(pos, end)
            if header is not None:
                after = pos + _HEADER_SIZE + header[0]
                if after == end or self._frame_at(after, end) is not None:
                    self._note_skip(pos, after, "CRC mismatch")
                    pos = after
                    continue
            resumed = self._resync(pos + 1, end)
            self._note_skip(pos, resumed, "unreadable tail" if resumed == end else "bad frame")
            pos = resumed
        return _Scan(records, pos, last_good)

    def _header(self, pos: int, end: int) -> tuple[int, int] | None:
        """(length, crc) at ``pos`` if the length is plausible for a frame ending by ``end``."""
        if end - pos < _HEADER_SIZE:
            return None
        length, crc = _HEADER.unpack(self._pread(pos, _HEADER_SIZE))
        if 0 < length <= MAX_RECORD and pos + _HEADER_SIZE + length <= end:
            return int(length), int(crc)
        return None

    def _frame_at(self, pos: int, end: int) -> tuple[bytes, int] | None:
        header = self._header(pos, end)
        if header is None:
            return None
        length, crc = header
        payload = self._pread(pos + _HEADER_SIZE, length)
        if zlib.crc32(payload) != crc:
            return None
        return payload, pos + _HEADER_SIZE + length

    def _resync(self, pos: int, end: int) -> int:
        while pos < end:
            chunk = self._pread(pos, min(_RESYNC_CHUNK + _HEADER_SIZE - 1, end - pos))
            for i in range(max(0, min(_RESYNC_CHUNK, len(chunk) - _HEADER_SIZE + 1))):
                length, _ = _HEADER.unpack_from(chunk, i)
                # Cheap in-memory filter first; only plausible headers cost a CRC check.
                if not 0 < length <= MAX_RECORD or pos + i + _HEADER_SIZE + length > end:
                    continue
                if self._frame_at(pos + i, end) is not None:
                    return pos + i
            pos += _RESYNC_CHUNK
        return end

    def _note_skip(self, start: int, stop: int, reason: str) -> None:
        if start < self._counted_until:
            return
        self._skipped += 1
        self._counted_until = stop
        log.warning(
            "spill journal: skipped %d corrupt bytes at offset %d (%s)",
            stop - start,
            start,
            reason,
        )

    # -- file I/O ---------------------------------------------------------------------

    def _pread(self, pos: int, size: int) -> bytes:
        data = os.pread(self._fd, size, pos)
        while len(data) < size:
            more = os.pread(self._fd, size - len(data), pos + len(data))
            if not more:
                raise OSError(f"spill journal shrank underneath us at offset {pos}")
            data += more
        return data

    def _pwrite_all(self, blob: bytes, pos: int) -> None:
        view = memoryview(blob)
        while view:
            written = os.pwrite(self._fd, view, pos)
            view = view[written:]
            pos += written

    def _rollback(self, start: int) -> None:
        # A failed batch must not leave a partial frame that later appends would follow.
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            log.exception("spill journal: could not roll back a failed append")
        try:
            self._end = os.fstat(self._fd).st_size
        except OSError:
            log.exception("spill journal: could not stat after a failed append")

    def _persist_offset(self, offset: int) -> None:
        tmp = self._dir / (OFFSET_NAME + ".tmp")
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{offset}\n")
            fh.flush()
            if self._fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, self._offset_path)
        self._sync_dir()

    def _reset(self) -> None:
        # Checkpoint 0 first: a crash before the truncate replays duplicates, never loses.
        self._persist_offset(0)
        self._checkpoint = 0
        self._last_read = None
        try:
            os.ftruncate(self._fd, 0)
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # Disk now says "replay everything"; make memory agree so nothing is skipped.
            self._pending = len(self._scan(0, self._end, None).records)
            raise
        self._end = 0
        self._pending = 0
        self._counted_until = 0

    def _sync_dir(self) -> None:
        # Makes the journal's creation and the checkpoint rename themselves durable.
        if not self._fsync:
            return
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("spill journal is closed")
