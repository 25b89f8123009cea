"""The storage circuit breaker: a failing store is left alone, the journal keeps every record."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from extproc.config import CircuitBreakerConfig
from extproc.policy.breaker import CircuitBreaker
from extproc.storage.journal import Journal
from extproc.storage.model import SpanRecord
from extproc.storage.stores import MemoryTraceStore, SpanQuery
from extproc.storage.writer import TraceWriter
from extproc.telemetry.metrics import Metrics


def span(n: int) -> SpanRecord:
    return SpanRecord(f"t{n}", f"t{n}", "tenant", None, float(n), "chat_completion", "allowed", 0)


class DownStore(MemoryTraceStore):
    """Refuses every write while `down`; counts the attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.attempts = 0
        self._lock = threading.Lock()

    def write(self, spans: Sequence[SpanRecord]) -> None:
        with self._lock:
            self.attempts += 1
        if self.down:
            raise ConnectionError("database unreachable")
        super().write(spans)


class Clock:
    """The breaker's clock, moved by the test (the writer thread only reads it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stored(store: MemoryTraceStore) -> list[str]:
    return sorted(s.trace_id for s in store.query(SpanQuery(limit=100000)))


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def outcome(metrics: Metrics, name: str) -> float:
    return metrics.child(metrics.storage_records, name)._value.get()  # type: ignore[no-any-return]


def start(tmp_path: Path, store: DownStore, clock: Clock) -> tuple[TraceWriter, Metrics]:
    metrics = Metrics()
    config = CircuitBreakerConfig(
        failure_threshold=2, recovery_timeout_ms=30_000, half_open_max_calls=1
    )
    breaker = CircuitBreaker("storage", config, metrics, clock=clock)
    writer = TraceWriter(
        store,
        Journal(tmp_path / "j", fsync=False),
        metrics,
        batch_size=10,
        flush_interval=0.01,
        retry_interval=0.01,  # without the breaker it would retry the store 100 times a second
        breaker=breaker,
    )
    writer.start()
    return writer, metrics


def test_open_breaker_spills_without_touching_the_store_and_recovers(tmp_path: Path) -> None:
    store, clock = DownStore(), Clock()
    writer, metrics = start(tmp_path, store, clock)
    for n in range(30):
        writer.submit(span(n))
    wait_for(lambda: writer.breaker.state == "open")
    wait_for(lambda: outcome(metrics, "spilled") == 30)
    tries = store.attempts
    assert tries == 2  # failure_threshold, then no more
    for n in range(30, 60):
        writer.submit(span(n))
    wait_for(lambda: outcome(metrics, "spilled") == 60)
    time.sleep(0.2)  # twenty retry intervals: the breaker, not the retry timer, decides
    assert store.attempts == tries
    assert stored(store) == []

    clock.now += 30  # recovery_timeout: one batch probes, the store is still down
    wait_for(lambda: store.attempts == tries + 1)
    wait_for(lambda: writer.breaker.state == "open")
    time.sleep(0.1)
    assert store.attempts == tries + 1  # a failed probe reopens: no second try

    store.down = False
    clock.now += 30
    wait_for(lambda: len(stored(store)) == 60)
    assert writer.breaker.state == "closed"
    writer.submit(span(60))  # closed again: straight to the store
    wait_for(lambda: len(stored(store)) == 61)
    assert writer.stop(5)
    assert stored(store) == sorted(f"t{n}" for n in range(61))
    assert outcome(metrics, "replayed") == 60
    assert outcome(metrics, "dropped") == 0
    text = metrics.render().decode()
    assert 'extproc_circuit_breaker_transitions_total{breaker="storage",state="open"} 2.0' in text
    assert 'extproc_circuit_breaker_state{breaker="storage"} 0.0' in text


def test_records_spilled_while_open_survive_a_restart(tmp_path: Path) -> None:
    store, clock = DownStore(), Clock()
    writer, metrics = start(tmp_path, store, clock)
    for n in range(25):
        writer.submit(span(n))
    wait_for(lambda: writer.breaker.state == "open")
    assert writer.stop(5)  # the shutdown drain tries once more, then leaves the journal
    assert outcome(metrics, "dropped") == 0
    assert stored(store) == []

    fresh = DownStore()
    fresh.down = False
    again, _ = start(tmp_path, fresh, Clock())
    wait_for(lambda: len(stored(fresh)) == 25)
    assert again.stop(5)
    assert stored(fresh) == sorted(f"t{n}" for n in range(25))
