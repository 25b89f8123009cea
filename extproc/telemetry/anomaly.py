"""Per-tenant anomaly detection: rolling baselines of cost, tokens, latency and request rate.

`AnomalyDetector.observe()` runs once per finished request. For each checked dimension it
compares the request's value with the tenant's baseline of the last `window_size` values
*before* adding it, so a spike is judged against what came before it (and then becomes part
of the baseline: a lasting change stops being flagged once the window has absorbed it).

The math, per tenant and dimension:

- baseline: mean and sample standard deviation of the last `window_size` values, kept as
  running sums in a ring buffer (O(1) per value; recomputed exactly every `window_size`
  replacements so floating-point drift cannot accumulate);
- a value is an anomaly when the baseline has `min_samples` values and
  `value > mean + sigma_threshold * std_eff`, where `std_eff = max(std, 10% of |mean|,
  an absolute floor)`. The floor keeps a zero-variance baseline (a test client sending the
  same prompt all day) from turning a one-token change into an "infinite sigma" spike: on
  a flat baseline a value must exceed the mean by `sigma_threshold` x 10% (30% at the
  default 3.0) and by the absolute floor x `sigma_threshold` (`_ABS_FLOOR`: 1 µUSD,
  1 token, 1 ms, 1 request);
- `sigma = (value - mean) / std_eff` is reported with the anomaly.

Velocity counts requests per `velocity_interval_seconds` interval (by the clock). The counts
of earlier intervals are the baseline; intervals in which the tenant sent nothing count as 0
(up to `window_size` of them), so the baseline is a true rate. The current interval is
checked on every request, so a surge is flagged while it happens, once per interval. (A
closing interval needs no second check: its count only grew while the baseline stood still,
so it crossed the threshold, if at all, during the interval.) A tenant's first interval is
partial and is left out of its baseline.

Memory is bounded: at most `MAX_TENANTS` tenants (fewer for large windows, so that the ring
buffers hold at most `MAX_STORED_VALUES` doubles, 8 bytes each: about 32 MB); the least
recently seen tenant is evicted and starts a fresh baseline when it returns. A dimension
that is not checked is not tracked. Not thread-safe: call from the event loop thread.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from extproc.config import AnomalyDetectionConfig
from extproc.detect.findings import Category, Finding, Severity
from extproc.telemetry.alerts import AlertEvent
from extproc.telemetry.metrics import Metrics

MAX_TENANTS = 10_000
MAX_STORED_VALUES = 4_000_000  # doubles across all tenants and dimensions: 32 MB
_REL_FLOOR = 0.1  # std_eff is at least this fraction of the mean
_ABS_FLOOR = {"cost": 1e-6, "tokens": 1.0, "latency": 1.0, "velocity": 1.0}

# Findings have no category for behavioural anomalies yet; until findings.py has one, the
# nearest existing category stands in (anomalies are produced after the response, so no
# per-category enforcement action can apply to them).
ANOMALY_CATEGORY = Category.ANOMALY

_DIMENSIONS = {  # dimension -> (anomaly type, unit for messages)
    "cost": ("cost_spike", "USD"),
    "tokens": ("token_spike", "tokens"),
    "latency": ("latency_spike", "ms"),
    "velocity": ("velocity_spike", "requests per interval"),
}
_UNITS = {kind: unit for kind, unit in _DIMENSIONS.values()}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A value well above its tenant's baseline: `value = mean + sigma * std`."""

    type: str  # "cost_spike" | "token_spike" | "velocity_spike" | "latency_spike"
    tenant_id: str | None
    value: float
    mean: float
    std: float  # the effective (floored) standard deviation the check used
    sigma: float  # how many std above the mean
    threshold: float  # the sigma_threshold it was judged against
    timestamp: float

    @property
    def severity(self) -> Severity:
        """MEDIUM from the threshold, HIGH from twice the threshold."""
        return Severity.HIGH if self.sigma >= 2 * self.threshold else Severity.MEDIUM

    @property
    def confidence(self) -> float:
        """0.5 at the threshold, 0.75 at twice it, capped at 0.99 (from three times)."""
        ratio = self.sigma / self.threshold if self.threshold > 0 else 1.0
        return min(0.99, max(0.5, 0.5 + 0.25 * (ratio - 1.0)))

    def to_finding(self) -> Finding:
        """A Finding for the trace; it covers no text (start = end = 0)."""
        return Finding(
            type=self.type,
            category=ANOMALY_CATEGORY,
            severity=self.severity,
            confidence=round(self.confidence, 4),
            start=0,
            end=0,
            rule_id=f"anomaly.{self.type}",
            detector="anomaly",
        )

    def to_alert(self, trace_id: str | None) -> AlertEvent:
        """An alert event; its score is the confidence x 100 (50-99)."""
        unit = _UNITS.get(self.type, "")
        return AlertEvent(
            kind="anomaly",
            type=self.type,
            severity=self.severity,
            score=round(self.confidence * 100),
            tenant_id=self.tenant_id,
            trace_id=trace_id,
            summary=(
                f"{self.type} for tenant {self.tenant_id or '-'}: {self.value:.6g} {unit} "
                f"against a mean of {self.mean:.6g} ({self.sigma:.1f} sigma)"
            ),
            details={
                "value": self.value,
                "mean": self.mean,
                "std": self.std,
                "sigma": round(self.sigma, 3),
                "sigma_threshold": self.threshold,
                "unit": unit,
            },
            timestamp=self.timestamp,
        )


class _Window:
    """The last `size` values in a ring buffer with a running mean and sum of squares."""

    __slots__ = ("_buf", "_head", "_m2", "_replaced", "mean", "n", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = array("d", bytes(8 * size))
        self._head = 0
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean
        self._replaced = 0

    def add(self, x: float) -> None:
        """Append x, dropping the oldest value when full."""
        if self.n < self.size:
            # Welford's update: stable where sum/sum-of-squares would cancel.
            self.n += 1
            delta = x - self.mean
            self.mean += delta / self.n
            self._m2 += delta * (x - self.mean)
        else:
            old = self._buf[self._head]
            delta = x - old
            new_mean = self.mean + delta / self.n
            self._m2 += delta * (x - new_mean + old - self.mean)
            self.mean = new_mean
            self._replaced += 1
        self._buf[self._head] = x
        self._head = (self._head + 1) % self.size
        if self._replaced >= self.size:
            self._recompute()  # O(size) once per size replacements: O(1) amortised

    def _recompute(self) -> None:
        values = self._buf[: self.n] if self.n < self.size else self._buf
        self.mean = math.fsum(values) / self.n
        self._m2 = math.fsum((v - self.mean) ** 2 for v in values)
        self._replaced = 0

    @property
    def std(self) -> float:
        """Sample standard deviation (0 below two values)."""
        if self.n < 2:
            return 0.0
        return math.sqrt(max(self._m2, 0.0) / (self.n - 1))


class _Velocity:
    """Requests in the current interval, and the counts of earlier intervals."""

    __slots__ = ("count", "flagged", "history", "interval", "partial")

    def __init__(self, size: int, interval: int) -> None:
        self.history = _Window(size)
        self.interval = interval  # index: floor(time / interval seconds)
        self.count = 0
        self.flagged = False
        self.partial = True  # the tenant's first interval started mid-way

    def advance(self, interval: int) -> None:
        """Close the current interval (and any empty ones) when `interval` is later."""
        if interval <= self.interval:
            return  # same interval, or the clock stepped back: keep counting here
        if not self.partial:
            self.history.add(float(self.count))
        for _ in range(min(interval - self.interval - 1, self.history.size)):
            self.history.add(0.0)
        self.interval = interval
        self.count = 0
        self.flagged = False
        self.partial = False


class _Tenant:
    """One tenant's baselines; a dimension's window is made on its first value."""

    __slots__ = ("velocity", "windows")

    def __init__(self) -> None:
        self.windows: dict[str, _Window] = {}
        self.velocity: _Velocity | None = None


class AnomalyDetector:
    """Flags per-tenant cost, token, latency and request-rate outliers."""

    def __init__(
        self,
        config: AnomalyDetectionConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        max_tenants: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self._max_tenants_override = max_tenants
        self._tenants: OrderedDict[str | None, _Tenant] = OrderedDict()
        self.config = config
        self.max_tenants = self._tenant_cap(config)

    def _tenant_cap(self, config: AnomalyDetectionConfig) -> int:
        if self._max_tenants_override is not None:
            return max(1, self._max_tenants_override)
        per_tenant = len(_DIMENSIONS) * config.window_size
        return max(1, min(MAX_TENANTS, MAX_STORED_VALUES // per_tenant))

    def reconfigure(self, config: AnomalyDetectionConfig) -> None:
        """Apply reloaded settings; a new window size or interval restarts the baselines."""
        old = self.config
        if (
            config.window_size != old.window_size
            or config.velocity_interval_seconds != old.velocity_interval_seconds
            or not config.enabled
        ):
            self._tenants.clear()
        else:
            # A dimension no longer checked drops its state; re-enabling starts afresh.
            for state in self._tenants.values():
                for dimension in [d for d in state.windows if not self._checks(config, d)]:
                    del state.windows[dimension]
                if not config.check_velocity:
                    state.velocity = None
        self.config = config
        self.max_tenants = self._tenant_cap(config)
        while len(self._tenants) > self.max_tenants:
            self._tenants.popitem(last=False)
        self.metrics.anomaly_tenants.set(len(self._tenants))

    @staticmethod
    def _checks(config: AnomalyDetectionConfig, dimension: str) -> bool:
        return bool(getattr(config, f"check_{dimension}"))

    @property
    def tenants(self) -> int:
        """How many tenants have baselines."""
        return len(self._tenants)

    def observe(
        self,
        *,
        tenant_id: str | None,
        cost_usd: float | None,
        tokens: int | None,
        latency_ms: float | None,
    ) -> list[Anomaly]:
        """Check one finished request against its tenant's baselines, then add it to them."""
        config = self.config
        if not config.enabled:
            return []
        now = self.clock()
        state = self._tenant(tenant_id)
        found: list[Anomaly] = []
        values = (("cost", cost_usd), ("tokens", tokens), ("latency", latency_ms))
        for dimension, raw in values:
            if raw is None or not self._checks(config, dimension):
                continue
            value = float(raw)
            if not math.isfinite(value) or value < 0:
                continue  # unknown or nonsense: neither judged nor learnt from
            window = state.windows.get(dimension)
            if window is None:
                window = state.windows[dimension] = _Window(config.window_size)
            anomaly = self._judge(dimension, tenant_id, value, window, now)
            if anomaly is not None:
                found.append(anomaly)
            window.add(value)
        if config.check_velocity:
            anomaly = self._count_request(state, tenant_id, now)
            if anomaly is not None:
                found.append(anomaly)
        for anomaly in found:
            self.metrics.inc(self.metrics.anomalies, anomaly.type)
        return found

    def _tenant(self, tenant_id: str | None) -> _Tenant:
        state = self._tenants.get(tenant_id)
        if state is not None:
            self._tenants.move_to_end(tenant_id)
            return state
        state = self._tenants[tenant_id] = _Tenant()
        if len(self._tenants) > self.max_tenants:
            self._tenants.popitem(last=False)  # the least recently seen tenant
        self.metrics.anomaly_tenants.set(len(self._tenants))
        return state

    def _count_request(self, state: _Tenant, tenant_id: str | None, now: float) -> Anomaly | None:
        seconds = self.config.velocity_interval_seconds
        interval = int(now // seconds)
        velocity = state.velocity
        if velocity is None:
            velocity = state.velocity = _Velocity(self.config.window_size, interval)
        velocity.advance(interval)
        velocity.count += 1
        if velocity.flagged:
            return None  # once per interval
        anomaly = self._judge("velocity", tenant_id, float(velocity.count), velocity.history, now)
        if anomaly is not None:
            velocity.flagged = True
        return anomaly

    def _judge(
        self, dimension: str, tenant_id: str | None, value: float, window: _Window, now: float
    ) -> Anomaly | None:
        config = self.config
        if window.n < config.min_samples:
            return None
        mean = window.mean
        std = max(window.std, _REL_FLOOR * abs(mean), _ABS_FLOOR[dimension])
        if value <= mean + config.sigma_threshold * std:
            return None
        return Anomaly(
            type=_DIMENSIONS[dimension][0],
            tenant_id=tenant_id,
            value=value,
            mean=mean,
            std=std,
            sigma=(value - mean) / std,
            threshold=config.sigma_threshold,
            timestamp=now,
        )
