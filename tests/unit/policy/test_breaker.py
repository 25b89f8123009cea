"""The circuit breaker's state machine, on an injected clock."""

from __future__ import annotations

import asyncio
import threading

import pytest

from extproc.config import CircuitBreakerConfig
from extproc.policy.breaker import CircuitBreaker, CircuitOpen
from extproc.telemetry.metrics import Metrics


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    *,
    threshold: int = 3,
    recovery_ms: int = 1000,
    probes: int = 1,
    enabled: bool = True,
) -> CircuitBreaker:
    config = CircuitBreakerConfig(
        enabled=enabled,
        failure_threshold=threshold,
        recovery_timeout_ms=recovery_ms,
        half_open_max_calls=probes,
    )
    return CircuitBreaker("analysis", config, metrics, clock=clock or Clock())


def trip(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert b.allow()
        b.failure()


def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(threshold=3)
    trip(b, 2)
    b.success()  # a success in between resets the count
    trip(b, 2)
    assert b.state == "closed" and b.status()["consecutive_failures"] == 2
    trip(b, 1)
    assert b.state == "open"
    assert not b.allow()


def test_recovery_timeout_then_half_open_probe_closes() -> None:
    clock = Clock()
    b = breaker(clock, recovery_ms=1000)
    trip(b, 3)
    clock.now += 0.999
    assert not b.allow() and b.state == "open"
    clock.now += 0.001
    assert b.state == "half_open"
    assert b.allow()  # the probe
    assert not b.allow()  # only one probe at a time
    b.success()
    assert b.state == "closed"
    assert b.allow() and b.allow()
    assert b.status()["consecutive_failures"] == 0


def test_failed_probe_reopens_for_another_timeout() -> None:
    clock = Clock()
    b = breaker(clock, recovery_ms=1000)
    trip(b, 3)
    clock.now += 1
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()


def test_half_open_admits_max_calls_and_needs_that_many_successes() -> None:
    clock = Clock()
    b = breaker(clock, probes=3)
    trip(b, 3)
    clock.now += 1
    assert [b.allow() for _ in range(4)] == [True, True, True, False]
    b.success()
    assert b.state == "half_open"
    assert b.allow()  # a slot freed by the finished probe
    b.success()
    assert b.state == "half_open"  # two successes of the three it takes
    b.success()
    assert b.state == "closed"


def test_a_failure_among_probes_reopens() -> None:
    clock = Clock()
    b = breaker(clock, probes=2)
    trip(b, 3)
    clock.now += 1
    assert b.allow() and b.allow()
    b.success()
    b.failure()
    assert b.state == "open"


def test_a_probe_that_never_reports_does_not_wedge_half_open() -> None:
    clock = Clock()
    b = breaker(clock, recovery_ms=1000)
    trip(b, 3)
    clock.now += 1
    assert b.allow()  # this probe's request is cancelled without release()
    assert not b.allow()
    clock.now += 1
    assert b.allow()
    b.release()
    assert b.allow()


def test_results_of_calls_admitted_before_it_opened_are_ignored() -> None:
    clock = Clock()
    b = breaker(clock)
    trip(b, 3)
    b.success()  # a slow call that started while closed
    assert b.state == "open"
    b.failure()
    clock.now += 1
    assert b.state == "half_open"  # the late failure did not push the probe time back


def test_status_for_health() -> None:
    clock = Clock()
    b = breaker(clock, recovery_ms=2000)
    assert b.status() == {
        "state": "closed",
        "enabled": True,
        "consecutive_failures": 0,
        "opened_at": None,
        "next_probe_at": None,
    }
    trip(b, 3)
    status = b.status()
    assert status["state"] == "open" and status["consecutive_failures"] == 3
    assert status["next_probe_at"] - status["opened_at"] == pytest.approx(2.0, abs=0.01)
    clock.now += 2
    status = b.status()
    assert status["state"] == "half_open" and status["next_probe_at"] is None
    assert status["opened_at"] is not None


def test_disabled_never_opens() -> None:
    b = breaker(threshold=1, enabled=False)
    trip(b, 50)
    assert b.state == "closed" and b.allow()
    assert b.status()["enabled"] is False


def test_reconfigure_keeps_state_and_disabling_closes() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)
    trip(b, 1)
    b.configure(CircuitBreakerConfig(failure_threshold=1, recovery_timeout_ms=5000))
    clock.now += 1
    assert b.state == "open"  # the new, longer timeout applies
    b.configure(CircuitBreakerConfig(enabled=False))
    assert b.state == "closed" and b.allow()


def test_metrics_state_gauge_and_transitions() -> None:
    clock, metrics = Clock(), Metrics()
    b = breaker(clock, metrics)

    def gauge() -> float:
        return metrics.child(metrics.breaker_state, "analysis")._value.get()  # type: ignore[no-any-return]

    def entered(state: str) -> float:
        child = metrics.child(metrics.breaker_transitions, "analysis", state)
        return child._value.get()  # type: ignore[no-any-return]

    assert gauge() == 0
    trip(b, 3)
    assert gauge() == 2 and entered("open") == 1
    clock.now += 1
    assert b.allow()
    assert gauge() == 1 and entered("half_open") == 1
    b.success()
    assert gauge() == 0 and entered("closed") == 1
    text = metrics.render().decode()
    assert 'extproc_circuit_breaker_state{breaker="analysis"} 0.0' in text
    assert 'extproc_circuit_breaker_transitions_total{breaker="analysis",state="open"} 1.0' in text


async def test_call_counts_exceptions_not_results_and_refuses_when_open() -> None:
    b = breaker(threshold=2)

    async def boom() -> int:
        raise TimeoutError("analysis timed out")

    async def fine() -> int:
        return 7

    assert await b.call(fine) == 7
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await b.call(boom)
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        await b.call(fine)


async def test_cancelled_call_releases_its_probe_slot() -> None:
    clock = Clock()
    b = breaker(clock)
    trip(b, 3)
    clock.now += 1
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(b.call(hangs))
    await started.wait()
    assert not b.allow()  # the hanging probe holds the only slot
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "half_open" and b.allow()


def test_threads_hammering_keep_counts_consistent() -> None:
    clock = Clock()
    b = breaker(clock, threshold=10_000, probes=5)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(1000):
            if b.allow():
                b.failure()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 8000 failures against a threshold of 10000: no lost update may open it early.
    assert b.state == "closed" and b.status()["consecutive_failures"] == 8000
    trip(b, 2000)
    assert b.state == "open"

    clock.now += 1
    admitted: list[bool] = []
    lock = threading.Lock()

    def prober() -> None:
        barrier.wait()
        ok = b.allow()
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=prober) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 5  # exactly half_open_max_calls probes at once
