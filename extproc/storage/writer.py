"""The async trace writer: the request path only enqueues; a thread batches into the store.

When the store fails (database down or slow) or the queue is full, records go to the spill
journal on local disk (fsync per batch) and are replayed, in order, when the store works
again. While the journal holds anything, new batches are appended behind it rather than
written directly, so records reach the store in the order they were produced. Upserts by
span id make a replay that repeats a batch harmless. Nothing is dropped unless the local
disk itself refuses the journal, and that is counted.

A circuit breaker (`circuit_breaker` settings) stops the writer from hammering a store that
keeps failing: while it is open, batches go straight to the journal and no replay is tried;
once `recovery_timeout_ms` has passed, a replayed batch probes the store (half-open).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence

from extproc.config import CircuitBreakerConfig
from extproc.policy.breaker import CircuitBreaker
from extproc.storage.journal import Journal
from extproc.storage.model import SpanRecord
from extproc.storage.stores import TraceStore
from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.storage")


class TraceWriter:
    """Batches spans from a bounded queue into a TraceStore, spilling to a Journal."""

    def __init__(
        self,
        store: TraceStore,
        journal: Journal | None,
        metrics: Metrics,
        *,
        queue_size: int = 10000,
        batch_size: int = 200,
        flush_interval: float = 0.2,
        retry_interval: float = 1.0,
        retention_seconds: float | None = None,
        purge_interval: float = 3600.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self._queue: queue.Queue[SpanRecord] = queue.Queue(maxsize=queue_size)
        self._overflow: deque[SpanRecord] = deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extproc-trace-writer", daemon=True)
        self._retry_at = 0.0
        self._failing = False
        self.retention_seconds = retention_seconds
        self.purge_interval = purge_interval
        self._purge_at = time.monotonic()  # first purge soon after start
        self.breaker = breaker or CircuitBreaker("storage", CircuitBreakerConfig(), metrics)

    # -- the request path ------------------------------------------------------------------
    def submit(self, span: SpanRecord) -> None:
        """Hand a finished span over; never blocks and never raises."""
        try:
            self._queue.put_nowait(span)
        except queue.Full:
            self._overflow.append(span)  # the writer spills these to the journal

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Drain what is queued (store, else journal) within `timeout`; True when drained."""
        self._stopping.set()
        self._thread.join(timeout)
        drained = not self._thread.is_alive()
        if not drained:
            log.error("trace writer did not drain within %.1fs; queued records are lost", timeout)
        return drained

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return self._queue.qsize() + len(self._overflow)

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._store(batch)
            overflow = self._drain_overflow()
            if overflow:
                self._spill(overflow)
            self._replay_if_due()
            self._purge_if_due()
            self.metrics.storage_queue_depth.set(self.depth)
            if self._stopping.is_set() and self._queue.empty() and not self._overflow:
                self._replay_if_due(force=True)
                return

    def _take(self) -> list[SpanRecord]:
        batch: list[SpanRecord] = []
        wait = 0.0 if self._stopping.is_set() else self.flush_interval
        try:
            batch.append(self._queue.get(timeout=wait) if wait else self._queue.get_nowait())
        except queue.Empty:
            return batch
        deadline = time.monotonic() + wait
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and not self._stopping.is_set():
                    batch.append(self._queue.get(timeout=remaining))
                else:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _drain_overflow(self) -> list[SpanRecord]:
        out = []
        while self._overflow:
            out.append(self._overflow.popleft())
        return out

    def _store(self, batch: Sequence[SpanRecord]) -> None:
        if self.journal is not None and self.journal.pending():
            self._spill(batch)  # keep order: older records are still in the journal
            return
        # With no journal to spill to, trying the store is the batch's only chance.
        if self.journal is not None and not self.breaker.allow():
            self._spill(batch)  # the store keeps failing: don't wait on it, journal it
            return
        try:
            self.store.write(batch)
        except Exception as exc:  # any store failure: the journal keeps the batch
            self.breaker.failure()
            self._note_failure(exc)
            self._spill(batch)
            return
        self.breaker.success()
        self._count("written", len(batch))
        self.metrics.storage_batches.inc()

    def _spill(self, batch: Sequence[SpanRecord]) -> None:
        if self.journal is None:
            log.error("no spill journal: %d trace records dropped", len(batch))
            self._count("dropped", len(batch))
            return
        try:
            self.journal.append([span.to_json() for span in batch])
        except OSError:
            log.exception("spill journal refused %d trace records; they are lost", len(batch))
            self._count("dropped", len(batch))
            return
        self._count("spilled", len(batch))

    def _replay_if_due(self, force: bool = False) -> None:
        journal = self.journal
        if journal is None or not journal.pending():
            return
        if not force and time.monotonic() < self._retry_at:
            return
        while journal.pending():
            # Open: leave the store alone until recovery_timeout; half-open: one probe batch.
            # At shutdown (force) one last try is worth more than the breaker's caution.
            if not force and not self.breaker.allow():
                return
            skipped_before = journal.skipped
            records, offset = journal.read_batch(self.batch_size)
            spans = []
            for data in records:
                try:
                    spans.append(SpanRecord.from_json(data))
                except ValueError:
                    log.warning("skipping an unreadable journal record (%d bytes)", len(data))
                    self._count("skipped", 1)
            self._count("skipped", journal.skipped - skipped_before)
            try:
                self.store.write(spans)
            except Exception as exc:
                self.breaker.failure()
                self._note_failure(exc)
                return
            self.breaker.success()
            journal.ack(offset)
            self._count("replayed", len(spans))
            if not records:
                break
        if self._failing:
            log.warning("trace store reachable again; spill journal replayed")
            self._failing = False

    def _purge_if_due(self) -> None:
        if self.retention_seconds is None or time.monotonic() < self._purge_at:
            return
        self._purge_at = time.monotonic() + self.purge_interval
        try:
            removed = self.store.purge(time.time() - self.retention_seconds)
        except Exception as exc:  # retried at the next interval; never stops the writer
            log.warning("retention purge failed: %s", exc)
            return
        if removed:
            log.info("retention purge removed %d traces", removed)
            self._count("purged", removed)

    def _note_failure(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_interval
        if not self._failing:
            log.warning("trace store failing (%s); spilling to the journal", exc)
            self._failing = True

    def _count(self, outcome: str, n: int) -> None:
        if n:
            self.metrics.child(self.metrics.storage_records, outcome).inc(n)
