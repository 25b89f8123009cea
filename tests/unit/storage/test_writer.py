"""The trace writer loses nothing: store outages spill and replay, a full queue never blocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from extproc.storage.journal import Journal
from extproc.storage.model import SpanRecord
from extproc.storage.stores import MemoryTraceStore, SpanQuery
from extproc.storage.writer import TraceWriter
from extproc.telemetry.metrics import Metrics


def span(n: int) -> SpanRecord:
    return SpanRecord(f"t{n}", f"t{n}", "tenant", None, float(n), "chat_completion", "allowed", 0)


class FlakyStore(MemoryTraceStore):
    """Fails while `down` is set; counts every write it accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.writes = 0

    def write(self, spans: Sequence[SpanRecord]) -> None:
        self.gate.wait()
        if self.down.is_set():
            raise ConnectionError("database unreachable")
        self.writes += len(spans)
        super().write(spans)


def stored(store: MemoryTraceStore) -> list[str]:
    return sorted(s.trace_id for s in store.query(SpanQuery(limit=100000)))


def wait_for(check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def writer(store: FlakyStore, tmp_path: Path, metrics: Metrics, **kw: object) -> TraceWriter:
    w = TraceWriter(
        store,
        Journal(tmp_path / "j", fsync=False),
        metrics,
        flush_interval=0.01,
        retry_interval=0.05,
        **kw,
    )  # type: ignore[arg-type]
    w.start()
    return w


def outcome(metrics: Metrics, name: str) -> float:
    return metrics.child(metrics.storage_records, name)._value.get()  # type: ignore[no-any-return]


def test_outage_spills_and_replays_every_record_once(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    w = writer(store, tmp_path, metrics)
    for n in range(50):
        w.submit(span(n))
    wait_for(lambda: len(stored(store)) == 50)
    store.down.set()
    for n in range(50, 150):
        w.submit(span(n))
    wait_for(lambda: outcome(metrics, "spilled") >= 100)
    store.down.clear()
    wait_for(lambda: len(stored(store)) == 150)
    assert w.stop(5)
    assert stored(store) == sorted(f"t{n}" for n in range(150))
    assert outcome(metrics, "replayed") == 100
    assert outcome(metrics, "dropped") == 0


def test_full_queue_never_blocks_and_loses_nothing(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    store.gate.clear()  # the store hangs (a slow database)
    w = writer(store, tmp_path, metrics, queue_size=5)
    slowest = 0.0
    for n in range(200):
        started = time.perf_counter()
        w.submit(span(n))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.005  # the request path is never held up
    store.gate.set()
    wait_for(lambda: len(stored(store)) == 200)
    assert w.stop(5)
    assert outcome(metrics, "dropped") == 0


def test_shutdown_drains_the_queue(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    w = writer(store, tmp_path, metrics)
    for n in range(500):
        w.submit(span(n))
    assert w.stop(10)
    assert len(stored(store)) == 500


def test_records_spilled_before_a_crash_are_replayed_by_the_next_writer(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    store.down.set()
    w = writer(store, tmp_path, metrics)
    for n in range(20):
        w.submit(span(n))
    assert w.stop(5)  # drained into the journal: the database never came back
    assert stored(store) == []
    fresh = FlakyStore()
    w2 = writer(fresh, tmp_path, Metrics())
    wait_for(lambda: len(stored(fresh)) == 20)
    assert w2.stop(5)


def test_retention_purge_runs_in_the_writer(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    store.write([span(1), SpanRecord("new", "new", None, None, time.time(), "op", "allowed", 0)])
    w = writer(store, tmp_path, metrics, retention_seconds=3600.0)
    wait_for(lambda: stored(store) == ["new"])
    assert outcome(metrics, "purged") == 1
    assert w.stop(5)
