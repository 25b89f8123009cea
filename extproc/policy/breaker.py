"""Circuit breaker: after repeated failures, stop calling a failing subsystem for a while.

CLOSED (normal) → `failure_threshold` consecutive failures → OPEN (calls refused) →
`recovery_timeout_ms` later → HALF_OPEN (up to `half_open_max_calls` probes at a time) →
`half_open_max_calls` successful probes → CLOSED, or any failed probe → OPEN again.

One breaker guards security analysis (shared by the event loop's requests) and one guards
trace storage (used by the writer thread), so every method is thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from extproc.config import CircuitBreakerConfig
from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.breaker")

State = Literal["closed", "half_open", "open"]
CLOSED: State = "closed"
HALF_OPEN: State = "half_open"
OPEN: State = "open"
# extproc_circuit_breaker_state: ordered by severity so `max` across workers is the worst.
_GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

T = TypeVar("T")


class CircuitOpen(Exception):
    """Raised by `CircuitBreaker.call` when the breaker refuses the call."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit breaker {name!r} is open")
        self.name = name


class CircuitBreaker:
    """Counts consecutive failures of one subsystem and refuses calls while it is open."""

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._config = config
        self._state: State = CLOSED
        self._consecutive = 0
        self._opened: float | None = None  # clock() when it last opened
        self._probes = 0  # half-open probes admitted and not yet reported
        self._probe_at = 0.0  # clock() of the latest admitted probe
        self._successes = 0  # successful probes in this half-open period
        if metrics is not None:
            metrics.child(metrics.breaker_state, name).set(_GAUGE[CLOSED])

    # -- configuration ---------------------------------------------------------------------
    @property
    def config(self) -> CircuitBreakerConfig:
        """The settings in force."""
        return self._config

    def configure(self, config: CircuitBreakerConfig) -> None:
        """Apply reloaded settings; the current state is kept (closed when now disabled)."""
        with self._lock:
            self._config = config
            if not config.enabled and self._state != CLOSED:
                self._enter(CLOSED)

    # -- the protocol ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        """closed, open or half_open (an open breaker past its timeout reads half_open)."""
        # `str`, not State: callers re-read it after the breaker moved, which a Literal
        # would have a type checker call unreachable.
        with self._lock:
            return self._advance(self._clock())

    def allow(self) -> bool:
        """Whether a call may go ahead now; a True in half-open admits one probe."""
        with self._lock:
            if not self._config.enabled:
                return True
            now = self._clock()
            state = self._advance(now)
            if state == CLOSED:
                return True
            if state == OPEN:
                return False
            if self._probes >= self._config.half_open_max_calls:
                # A probe that never reported (its request cancelled and nobody called
                # release) must not wedge the breaker: after a recovery period, admit anew.
                if now - self._probe_at < self._recovery:
                    return False
                self._probes = 0
            self._probes += 1
            self._probe_at = now
            return True

    def success(self) -> None:
        """Report a call that worked: resets the failure count, or counts a good probe."""
        with self._lock:
            if self._state == CLOSED:
                self._consecutive = 0
            elif self._state == HALF_OPEN:
                self._probes = max(0, self._probes - 1)
                self._successes += 1
                if self._successes >= self._config.half_open_max_calls:
                    self._enter(CLOSED)
            # OPEN: a call admitted before it opened says nothing about the subsystem now.

    def failure(self) -> None:
        """Report a failed call: may open the breaker (a failed probe always reopens it)."""
        with self._lock:
            self._consecutive += 1
            if not self._config.enabled:
                return
            tripped = self._consecutive >= self._config.failure_threshold
            if self._state == HALF_OPEN or (self._state == CLOSED and tripped):
                self._enter(OPEN)

    def release(self) -> None:
        """Give back an admitted call that ended with no verdict (cancelled)."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._probes = max(0, self._probes - 1)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await `fn()` under the breaker; raises CircuitOpen instead of calling when open."""
        if not self.allow():
            raise CircuitOpen(self.name)
        try:
            result = await fn()
        except Exception:
            self.failure()
            raise
        except BaseException:  # cancelled: the caller went away, the subsystem did not fail
            self.release()
            raise
        self.success()
        return result

    def status(self) -> dict[str, Any]:
        """For /health: state, consecutive_failures, opened_at and next_probe_at (epoch s)."""
        with self._lock:
            now = self._clock()
            state = self._advance(now)
            opened_at = next_probe_at = None
            if self._opened is not None and state != CLOSED:
                # The injected clock is monotonic; report wall-clock times people can read.
                opened_at = time.time() - (now - self._opened)
                if state == OPEN:
                    next_probe_at = round(opened_at + self._recovery, 3)
                opened_at = round(opened_at, 3)
            return {
                "state": state,
                "enabled": self._config.enabled,
                "consecutive_failures": self._consecutive,
                "opened_at": opened_at,
                "next_probe_at": next_probe_at,
            }

    # -- internals (lock held) -------------------------------------------------------------
    @property
    def _recovery(self) -> float:
        return self._config.recovery_timeout_ms / 1000

    def _advance(self, now: float) -> State:
        if (
            self._state == OPEN
            and self._opened is not None
            and now - self._opened >= self._recovery
        ):
            self._enter(HALF_OPEN)
        return self._state

    def _enter(self, state: State) -> None:
        previous, self._state = self._state, state
        self._probes = self._successes = 0
        if state == OPEN:
            self._opened = self._clock()
            log.warning(
                "circuit breaker %s open after %d consecutive failures; retry in %.1fs",
                self.name,
                self._consecutive,
                self._recovery,
            )
        elif state == CLOSED:
            self._consecutive = 0
            self._opened = None
            log.info("circuit breaker %s closed: calls go through again", self.name)
        else:
            log.info("circuit breaker %s half-open: probing", self.name)
        metrics = self.metrics
        if metrics is not None and previous != state:
            metrics.child(metrics.breaker_state, self.name).set(_GAUGE[state])
            metrics.inc(metrics.breaker_transitions, self.name, state)
